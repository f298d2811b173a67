"""schemathesis against the app's own OpenAPI document: every operation, with a token.

Each generated request must get an answer that is not a 5xx and that conforms to the
document (status, content type, headers, body schema), and requests the document calls
valid must be accepted. The number of cases is printed when the module ends (``-s``).

Two rules cannot be written in JSON Schema, so the generated requests are made to follow
them rather than the checks loosened: step names are unique within a plan, and a cursor
is one this API made (``format: cursor``). Text holds no NUL character (Postgres cannot
store one; the API answers 422). Cases that cannot be sent as generated (a query parameter
whose value is nothing) are skipped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from sqlalchemy import select

from nofx.api import create_app
from nofx.api.runs import encode_cursor
from nofx.api.schemas import STEP_NAME
from nofx.db.engine import transaction
from nofx.db.models import runs
from nofx.domain import RUN_ACTIVE
from nofx.errors import Conflict
from nofx.services import health
from nofx.services import runs as service
from tests.support.api import app_with_tokens, bearer, new_token
from tests.support.procs import wait_until

TOKEN = new_token()
CASES: Counter[str] = Counter()

# The document does not depend on tokens or services, so it is read at collection time;
# the requests go to ``fuzz_app``, which has a token configured.
# No NUL characters in generated text: Postgres cannot store them, the API says so with a
# 422 (``test_api_limits.py``), and JSON Schema has no way to forbid them in free-form inputs.
schema = schemathesis.openapi.from_wsgi(
    "/openapi.json", create_app({"TESTING": True}),
    config=SchemathesisConfig.from_dict({"generation": {"allow-x00": False}}),
)

schemathesis.openapi.format("cursor", st.builds(
    lambda at, run_id: encode_cursor((at, str(run_id))),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                 timezones=st.just(UTC)),
    st.uuids(),
))


def give_steps_unique_names(body: Any) -> None:
    """Rename valid step names that repeat: the API refuses them, JSON Schema cannot say so.

    Done to every generated body (schemathesis's body filters skip its coverage phase).
    Only names that are valid are touched, so an invalid body stays invalid.
    """
    plan = body.get("plan") if isinstance(body, dict) else None
    steps = plan.get("steps") if isinstance(plan, dict) else None
    if not isinstance(steps, list):
        return
    seen: set[str] = set()
    for index, step in enumerate(steps):
        name = step.get("name") if isinstance(step, dict) else None
        if isinstance(name, str) and re.fullmatch(STEP_NAME, name):
            if name in seen:
                step["name"] = name = f"step-{index}"
            seen.add(name)


def without_nul(value: Any) -> Any:
    """``value`` with every NUL character in its text made a ``0``.

    ``allow-x00`` is off, but schemathesis's coverage phase still makes such text; this
    applies the same rule to every phase.
    """
    if isinstance(value, str):
        return value.replace("\x00", "0")
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value


def reaches_the_server_as_generated(case: Any) -> bool:
    """False when a query parameter is ``None`` or ``[]``: it is not sent at all.

    Such a "schema-violating" case is the very same request as a valid one on the wire,
    so no server could reject it.
    """
    return not any(value is None or value == [] for value in (case.query or {}).values())


@pytest.fixture(scope="module")
def fuzz_app(services: dict[str, Any], worker: Any, beat: Any) -> Iterator[Any]:
    """The app with a token configured, and everything /health/detailed asks about up.

    The fuzzer's plans may sleep for hours on the session's worker: they are cancelled
    when the module ends.
    """
    wait_until(lambda: all(c["ok"] for c in health.detailed().values()), timeout=30,
               what="every check of /health/detailed to pass")
    started = datetime.now(UTC)
    yield app_with_tokens(TOKEN)
    with transaction() as conn:
        active = conn.execute(select(runs.c.id).where(
            runs.c.created_at >= started, runs.c.status.in_(RUN_ACTIVE))).scalars().all()
    for run_id in active:
        try:
            service.cancel_run(run_id)
        except Conflict:
            pass  # it finished between the query and the cancel: nothing left to stop
    print(f"\nschemathesis: {sum(CASES.values())} cases over {len(CASES)} operations: "
          + ", ".join(f"{op} {n}" for op, n in sorted(CASES.items())))


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented_and_never_with_a_server_error(
    fuzz_app: Any, case: Any
) -> None:
    # given a request generated from the document, with a valid token
    assume(reaches_the_server_as_generated(case))
    CASES[case.operation.label] += 1
    if isinstance(case.body, (dict, list)):
        case.body = without_nul(case.body)
    give_steps_unique_names(case.body)
    # when it is sent, then the answer conforms to the document and is not a 5xx
    case.call_and_validate(app=fuzz_app, headers=bearer(TOKEN))
