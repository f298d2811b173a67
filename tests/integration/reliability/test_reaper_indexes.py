"""The reaper reads partial indexes, so a tick costs the same however many steps have finished."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from nofx import status
from nofx.db.engine import get_engine
from nofx.services import reaper


def plan_of(query) -> str:
    engine = get_engine()
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # show which index can serve it
        rows = conn.execute(text(f"EXPLAIN {compiled}")).scalars().all()
        conn.rollback()
    return "\n".join(rows)


@pytest.mark.parametrize(("query", "index"), [
    (lambda: reaper.running_steps_query(), "ix_steps_running"),
    (lambda: reaper.stalled_query(status.now(), status.now() - timedelta(minutes=2)),
     "ix_steps_due"),
    (lambda: reaper.completed_query(), "ix_runs_status_created"),
], ids=["stuck steps", "stalled runs", "completed runs"])
def test_each_reaper_query_is_served_by_an_index(database, query, index):
    assert index in plan_of(query())
