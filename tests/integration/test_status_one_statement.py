"""On Postgres a run's creation and a step's claim and success are one statement each (a CTE,
and the functions of migration 0003); the Python path is the reference. The same story told
through each must leave the same rows behind."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from nofx import status
from nofx.db.counters import totals
from nofx.db.engine import get_engine
from nofx.db.models import artifacts, events, runs, steps


def _story(url: str) -> tuple[str, list[Any]]:
    """Two steps of two tools, the second with two artifacts: claim, a refused early claim, successes,
    a duplicate success, a claim after the end. Returns the run id and what each call said."""
    run_id = status.new_id()
    ids = [status.new_id(), status.new_id()]
    with get_engine(url).begin() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, dispatched=True, step_rows=[
            {"id": sid, "index": i, "name": f"s{i}", "tool": tool, "inputs": {"i": i},
             "max_attempts": 2, "timeout_s": 5.0}
            for i, (sid, tool) in enumerate(zip(ids, ("echo", "sleep")))])
    results: list[Any] = []
    with get_engine(url).begin() as conn:
        results.append(status.claim_step(conn, run_id, ids[1], "t-early"))  # not yet: None
        first = status.claim_step(conn, run_id, ids[0], "t-0")
        results.append((first.index, first.name, first.tool, first.inputs, first.attempt,
                        first.max_attempts, first.timeout_s))
    with get_engine(url).begin() as conn:
        results.append(status.succeed_step(conn, run_id, ids[0], 1, {"out": [1, "x", None]}))
        results.append(status.succeed_step(conn, run_id, ids[0], 1, {"again": True}))  # False
    with get_engine(url).begin() as conn:
        second = status.claim_step(conn, run_id, ids[1], "t-1")
        results.append((second.index, second.attempt, second.inputs))
        results.append(status.succeed_step(conn, run_id, ids[1], 1, {"n": 2}, [
            status.NewArtifact(name=f"a{n}.txt", content_type="text/plain", size=n,
                               sha256=f"{n:064d}", storage_key=f"k/{n}", id=f"art-{n}")
            for n in (1, 2)]))
    with get_engine(url).begin() as conn:
        results.append(status.claim_step(conn, run_id, ids[1], "t-late"))  # run ended: None
    assert results[0] is None and results[3] is False and results[-1] is None
    return run_id, results


def _rows(url: str, run_id: str) -> dict[str, Any]:
    """Everything the story wrote, with ids and times replaced by what can be compared."""
    with get_engine(url).begin() as conn:
        run = dict(conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one())
        step_rows = [dict(r) for r in conn.execute(
            select(steps).where(steps.c.run_id == run_id).order_by(steps.c.index)).mappings()]
        event_rows = [dict(r) for r in conn.execute(
            select(events).where(events.c.run_id == run_id).order_by(events.c.id)).mappings()]
        artifact_rows = [dict(r) for r in conn.execute(
            select(artifacts).where(artifacts.c.run_id == run_id)
            .order_by(artifacts.c.name)).mappings()]
    step_index = {row["id"]: row["index"] for row in step_rows}

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in row.items():
            if key in ("id", "run_id") or key == "step_id" and value is None:
                continue
            if key == "step_id":
                value = step_index[value]
            elif isinstance(value, datetime):
                value = "<time>"
            elif key == "payload" and "duration_s" in value:
                value = {**value, "duration_s": type(value["duration_s"]).__name__}
            out[key] = value
        return out

    return {"run": plain(run), "steps": [plain(r) for r in step_rows],
            "events": [plain(r) for r in event_rows],
            "artifacts": [plain(r) | {"id": r["id"]} for r in artifact_rows]}


def test_the_one_statement_paths_write_what_the_python_path_writes(database, monkeypatch):
    told = {}
    for one_statement in (False, True):
        monkeypatch.setattr(status, "ONE_STATEMENT", one_statement)
        with get_engine(database).begin() as conn:
            before = totals(conn, "steps"), totals(conn, "runs")
        run_id, results = _story(database)
        with get_engine(database).begin() as conn:
            after = totals(conn, "steps"), totals(conn, "runs")
        counted = [{k: v - old.get(k, 0) for k, v in new.items() if v != old.get(k, 0)}
                   for old, new in zip(before, after)]
        told[one_statement] = (results, _rows(database, run_id), counted)
        # both stories name the same artifact ids (so they compare): free them for the next
        with get_engine(database).begin() as conn:
            conn.execute(artifacts.delete().where(artifacts.c.run_id == run_id))
    assert told[True] == told[False]
    results, rows, counted = told[True]
    assert [e["type"] for e in rows["events"]] == [
        "run.created", "run.started", "step.started", "step.finished", "step.started",
        "artifact.created", "artifact.created", "step.finished", "run.finished"]
    assert rows["run"]["status"] == "succeeded"
    assert rows["run"]["dispatched_at"] == "<time>"  # written with the run (dispatched=True)
    assert counted == [{"tool=echo,status=queued": 1, "tool=echo,status=running": 1,
                        "tool=echo,status=succeeded": 1, "tool=sleep,status=queued": 1,
                        "tool=sleep,status=running": 1, "tool=sleep,status=succeeded": 1},
                       {"status=queued": 1, "status=running": 1, "status=succeeded": 1}]


@pytest.mark.parametrize("one_statement", [False, True])
def test_a_claim_of_a_missing_run_or_step_is_refused(database, monkeypatch, one_statement):
    monkeypatch.setattr(status, "ONE_STATEMENT", one_statement)
    with get_engine(database).begin() as conn:
        assert status.claim_step(conn, status.new_id(), status.new_id(), "t") is None
        assert status.succeed_step(conn, status.new_id(), status.new_id(), 1, {}) is False


def test_migration_0003_adds_and_removes_the_functions():
    """Upgrade, downgrade and upgrade again on a database of its own."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from nofx.db.migrate import alembic_config, upgrade
    from tests.conftest import PG_SERVER

    name = f"nofx_mig_{status.new_id()[:8]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_SERVER}/{name}"
    engine = create_engine(url)

    def functions() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(text(
                "SELECT proname FROM pg_proc WHERE proname LIKE 'nofx\\_%'")).scalars())

    try:
        upgrade(url)
        assert functions() == {"nofx_claim_step", "nofx_succeed_step"}
        command.downgrade(alembic_config(url), "0002")
        assert functions() == set()
        upgrade(url)
        assert functions() == {"nofx_claim_step", "nofx_succeed_step"}
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_workers_claim_and_success_share_the_connection_its_thread_holds(database,
                                                                           monkeypatch):
    from nofx.db import engine as engines
    from nofx.services import execute
    from tests.support.api import settings_env

    run_id, step_id = status.new_id(), status.new_id()
    with settings_env(NOFX_DATABASE_URL=database, NOFX_LLM_PROVIDER="offline"):
        with status.write_connection() as conn:
            status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[
                {"id": step_id, "index": 0, "name": "s0", "tool": "echo",
                 "inputs": {"text": "hi"}, "max_attempts": 2, "timeout_s": 5.0}])
        used: list[int] = []
        real = engines.fetch_one_by_driver

        def spy(conn: Any, sql: str, params: tuple) -> Any:
            used.append(id(conn))
            return real(conn, sql, params)

        monkeypatch.setattr(status, "fetch_one_by_driver", spy)
        step = execute.claim(run_id, step_id, "t-1")
        assert step is not None and execute.run_claimed(step) == {"text": "hi"}

    # one connection for both, kept checked out by this thread for its next step
    assert len(used) == 2 and used[0] == used[1]
    held = engines._held.__dict__.get("connections", {})
    assert used[0] in {id(conn) for conn, _ in held.values()}
