"""The status counters behind /metrics: one per transition, exactly once, cheap to read."""

from __future__ import annotations

from sqlalchemy import create_engine, insert, text

from nofx import status
from nofx.db import counters
from nofx.db.engine import transaction
from nofx.db.migrate import upgrade
from nofx.db.models import runs, steps
from tests.support.procs import wait_until
from tests.support.runs import plan, quiet, settle, step, submit, wait_finished


def totals() -> dict[tuple[str, str], int]:
    with transaction() as conn:
        return {(name, labels): n for name in ("runs", "steps")
                for labels, n in counters.totals(conn, name).items()}


def test_every_transition_of_a_run_adds_to_its_status_counters_once(client, worker):
    wait_until(quiet, timeout=60, what="earlier tests' runs to finish")
    before = totals()

    run = wait_finished(client, submit(client, plan(step("a", "echo"), step("b", "echo")))["id"])

    after = totals()
    moved = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert run["status"] == "succeeded"
    assert {k: v for k, v in moved.items() if v} == {
        ("runs", "status=queued"): 1, ("runs", "status=running"): 1,
        ("runs", "status=succeeded"): 1,
        ("steps", "tool=echo,status=queued"): 2, ("steps", "tool=echo,status=running"): 2,
        ("steps", "tool=echo,status=succeeded"): 2,
    }


def test_a_guarded_transition_that_does_not_happen_counts_nothing(database):
    run_id, step_id = status.new_id(), status.new_id()
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "s", "tool": "echo", "inputs": {},
            "max_attempts": 1, "timeout_s": 5.0}], dispatched=True)
    try:
        before = totals()
        with transaction() as conn:
            assert not status.succeed_step(conn, run_id, step_id, 1, {})  # never claimed
            assert status.finish_run(conn, run_id) is False
        assert totals() == before
    finally:
        settle([run_id])


def test_upgrading_an_existing_database_seeds_the_counters_from_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, revision="0001")
    engine = create_engine(url)
    now = status.now()
    with engine.begin() as conn:
        for i, run_status in enumerate(["succeeded", "succeeded", "failed"]):
            conn.execute(insert(runs).values(id=f"r{i}", status=run_status, goal="g", plan={},
                                             created_at=now, updated_at=now))
            conn.execute(insert(steps).values(
                id=f"s{i}", run_id=f"r{i}", index=0, name="s", tool="codegen",
                status=run_status, inputs={}, attempt=1, max_attempts=3, timeout_s=5.0,
                updated_at=now))

    upgrade(url)

    with engine.begin() as conn:
        assert counters.totals(conn, "runs") == {"status=succeeded": 2, "status=failed": 1}
        assert counters.totals(conn, "steps") == {"tool=codegen,status=succeeded": 2,
                                                  "tool=codegen,status=failed": 1}
        assert conn.execute(text("SELECT count(*) FROM counters")).scalar() == 4
    engine.dispose()
