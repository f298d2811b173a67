"""Which schema revisions serve this code: its head, or a newer release's (rolling upgrade)."""

from __future__ import annotations

import pytest

from nofx.db.migrate import head, schema_problem


def _shifted(by: int) -> str:
    return f"{int(head()) + by:04d}"


@pytest.mark.parametrize(("found", "fine", "says"), [
    (head(), True, None),
    (_shifted(+1), True, None),  # a newer release migrated first
    (_shifted(+12), True, None),
    (_shifted(-1), False, "run `nofx db upgrade`"),
    ("0001", False, "run `nofx db upgrade`"),
    (None, False, "at no revision"),
    ("", False, "at no revision"),
    ("base", False, "not a NOFX revision"),
    ("ae1027a6acf", False, "not a NOFX revision"),  # another project's alembic_version
    (f"{head()},{_shifted(+1)}", False, "not a NOFX revision"),  # branches: never NOFX's
])
def test_a_schema_serves_this_code_when_it_is_the_head_or_newer(found, fine, says):
    problem = schema_problem(found)
    assert (problem is None) is fine, problem
    if says:
        assert says in problem
