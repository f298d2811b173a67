"""``GET /runs``'s statement on SQLite (the API tests run it on Postgres): a page ends once
its plans pass the byte budget, and says whether more runs follow."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert

from nofx import status
from nofx.db.engine import get_engine
from nofx.db.migrate import upgrade
from nofx.db.models import runs
from nofx.services.runs import list_runs_query


def test_the_page_statement_keeps_to_the_byte_budget_on_sqlite(tmp_path):
    # given a fresh SQLite database with four finished runs whose plans are ~10 kB each
    url = f"sqlite:///{tmp_path / 'pages.db'}"
    upgrade(url)
    start = status.now()
    made = []
    with get_engine(url).begin() as conn:
        for i in range(4):
            run_id = status.new_id()
            made.append(run_id)
            at = start + timedelta(seconds=i)
            conn.execute(insert(runs).values(id=run_id, status="succeeded", goal="g",
                                             plan={"bulk": str(i) * 10_000}, created_at=at,
                                             updated_at=at))

    def page(limit: int, max_bytes: int) -> tuple[list[str], int]:
        with get_engine(url).connect() as conn:
            rows = conn.execute(list_runs_query(None, limit, None, max_bytes)).mappings().all()
        return [r["id"] for r in rows], (rows[0]["found"] if rows else 0)

    newest_first = made[::-1]
    # then a budget of 25 kB takes three (the third starts at 20 kB) of the four there are
    assert page(4, 25_000) == (newest_first[:3], 4)
    # a budget smaller than one plan still takes one run
    assert page(4, 100) == (newest_first[:1], 4)
    # a large budget takes the limit and one more, which tells the caller more follow
    assert page(2, 10_000_000) == (newest_first[:3], 3)
    assert page(10, 10_000_000) == (newest_first, 4)
