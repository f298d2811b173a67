"""Every step status pair, on SQLite and Postgres: a transition happens exactly when allowed.

Set-up writes statuses directly (that is what a test set-up is for); everything under test
goes through ``nofx.status``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from nofx import status
from nofx.db.engine import get_engine
from nofx.db.migrate import upgrade
from nofx.db.models import events, runs, steps
from nofx.domain import RUN_TRANSITIONS, STEP_TRANSITIONS, RunStatus, StepStatus
from tests.support.runs import settle

S = StepStatus
RUN_STATUS_FOR = {S.QUEUED: RunStatus.QUEUED, S.RUNNING: RunStatus.RUNNING,
                  S.SUCCEEDED: RunStatus.RUNNING, S.FAILED: RunStatus.FAILED,
                  S.TIMED_OUT: RunStatus.FAILED, S.CANCELLED: RunStatus.CANCELLED}


#: Runs this test made, ended when it ends: they share the session's database with its beat
#: and worker (``settle``).
MADE: list[str] = []


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-python"])
def db_url(request, tmp_path, monkeypatch) -> Iterator[str]:
    """SQLite; Postgres with its one-statement paths; Postgres with the Python path only."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'status.db'}"
        upgrade(url)
        yield url
        return
    monkeypatch.setattr(status, "ONE_STATEMENT", request.param == "postgresql")
    url = request.getfixturevalue("database")
    MADE.clear()
    yield url
    settle(MADE, url)


def make_run(url: str, step_status: StepStatus) -> tuple[str, str]:
    """A one-step run with its step in ``step_status`` (attempt 1 unless queued); sent, as
    far as any reaper can tell (``dispatched``)."""
    run_id, step_id = status.new_id(), status.new_id()
    MADE.append(run_id)
    with get_engine(url).begin() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "s", "tool": "echo", "inputs": {},
            "max_attempts": 3, "timeout_s": 30.0}], dispatched=True)
        attempt = 0 if step_status == S.QUEUED else 1
        conn.execute(update(steps).where(steps.c.id == step_id).values(
            status=step_status, attempt=attempt,
            started_at=None if attempt == 0 else status.now(), task_id="t-1"))
        conn.execute(update(runs).where(runs.c.id == run_id).values(
            status=RUN_STATUS_FOR[step_status]))
    return run_id, step_id


def operation(to: StepStatus, frm: StepStatus) -> Callable[[Any, str, str], Any]:
    """The ``nofx.status`` call that would move a step to ``to``."""
    return {
        S.RUNNING: lambda c, r, s: status.claim_step(c, r, s, "t-2"),
        S.SUCCEEDED: lambda c, r, s: status.succeed_step(c, r, s, 1, {"ok": True}),
        S.FAILED: lambda c, r, s: status.fail_step(c, r, s, 1, {"type": "E", "message": "m"}),
        S.TIMED_OUT: lambda c, r, s: status.fail_step(c, r, s, 1, {"type": "T", "message": "m"},
                                                      status=S.TIMED_OUT),
        S.CANCELLED: lambda c, r, s: status.cancel_run(c, r),
        S.QUEUED: (lambda c, r, s: status.requeue_step(c, r, s, 1, ("step.retrying", {})))
        if frm == S.RUNNING else (lambda c, r, s: status.resume_run(c, r)),
    }[to]


def step_status(url: str, step_id: str) -> str:
    with get_engine(url).begin() as conn:
        return conn.execute(select(steps.c.status).where(steps.c.id == step_id)).scalar_one()


def event_count(url: str, step_id: str) -> int:
    """Events about this step (run-level events are not the step's transitions)."""
    with get_engine(url).begin() as conn:
        return conn.execute(select(func.count()).where(events.c.step_id == step_id)).scalar_one()


PAIRS = [(a, b) for a, b in itertools.product(StepStatus, StepStatus) if a != b]


@pytest.mark.parametrize(("frm", "to"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_a_step_moves_only_along_allowed_transitions_and_once(db_url, frm, to):
    # given a step in status `frm`
    run_id, step_id = make_run(db_url, frm)
    before = event_count(db_url, step_id)
    op = operation(to, frm)

    # when the transition to `to` is attempted
    with get_engine(db_url).begin() as conn:
        op(conn, run_id, step_id)

    # then it happened, with events, exactly when the table allows it
    allowed = (frm, to) in STEP_TRANSITIONS
    assert (step_status(db_url, step_id) == to) is allowed
    after = event_count(db_url, step_id)
    assert (after > before) is allowed
    # and trying it again changes nothing and writes no event
    with get_engine(db_url).begin() as conn:
        op(conn, run_id, step_id)
    assert event_count(db_url, step_id) == after


def test_a_claim_starts_the_run_once_and_records_both_starts(db_url):
    run_id, step_id = make_run(db_url, S.QUEUED)
    with get_engine(db_url).begin() as conn:
        claimed = status.claim_step(conn, run_id, step_id, "t-1")
    assert claimed is not None and claimed.attempt == 1
    with get_engine(db_url).begin() as conn:
        types = conn.execute(select(events.c.type).where(events.c.run_id == run_id)
                             .order_by(events.c.id)).scalars().all()
        run_status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar_one()
    assert types == ["run.created", "run.started", "step.started"]
    assert run_status == RunStatus.RUNNING


def test_a_run_ends_with_its_last_steps_success_and_only_once(db_url):
    run_id, first, second = status.new_id(), status.new_id(), status.new_id()
    with get_engine(db_url).begin() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[
            {"id": sid, "index": i, "name": f"s{i}", "tool": "echo", "inputs": {},
             "max_attempts": 1, "timeout_s": 5.0} for i, sid in enumerate((first, second))])
        status.claim_step(conn, run_id, first, "t")
        assert status.succeed_step(conn, run_id, first, 1, {})
        assert status.finish_run(conn, run_id) is False  # its second step has not run
        status.claim_step(conn, run_id, second, "t")
        assert status.succeed_step(conn, run_id, second, 1, {})
        assert status.finish_run(conn, run_id) is False  # already ended by that success
    with get_engine(db_url).begin() as conn:
        run_status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar_one()
        types = conn.execute(select(events.c.type).where(events.c.run_id == run_id)
                             .order_by(events.c.id)).scalars().all()
    assert run_status == RunStatus.SUCCEEDED
    assert types[-2:] == ["step.finished", "run.finished"]
    assert types.count("run.finished") == 1
    assert (RunStatus.RUNNING, RunStatus.SUCCEEDED) in RUN_TRANSITIONS


def test_a_failed_step_cancels_the_rest_and_fails_the_run(db_url):
    run_id, first, second = status.new_id(), status.new_id(), status.new_id()
    with get_engine(db_url).begin() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[
            {"id": first, "index": 0, "name": "a", "tool": "echo", "inputs": {},
             "max_attempts": 1, "timeout_s": 5.0},
            {"id": second, "index": 1, "name": "b", "tool": "echo", "inputs": {},
             "max_attempts": 1, "timeout_s": 5.0}])
        assert status.claim_step(conn, run_id, second, "t") is None  # not before the first
        assert status.claim_step(conn, run_id, first, "t") is not None
        assert status.fail_step(conn, run_id, first, 1, {"type": "E", "message": "boom"})
    assert step_status(db_url, second) == S.CANCELLED
    with get_engine(db_url).begin() as conn:
        assert conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar_one() == "failed"
        finished = conn.execute(select(events.c.payload).where(
            events.c.run_id == run_id, events.c.type == "step.finished")
            .order_by(events.c.id)).scalars().all()
    assert [p["status"] for p in finished] == ["failed", "cancelled"]
    assert finished[0]["error"] == {"type": "E", "message": "boom"}


def test_a_stale_attempt_cannot_finish_a_newer_one(db_url):
    run_id, step_id = make_run(db_url, S.RUNNING)
    with get_engine(db_url).begin() as conn:
        assert status.requeue_step(conn, run_id, step_id, 1, ("step.reaped", {}))
        assert status.claim_step(conn, run_id, step_id, "t-2").attempt == 2
        # attempt 1 wakes up late: neither its success nor its failure counts
        assert not status.succeed_step(conn, run_id, step_id, 1, {})
        assert not status.fail_step(conn, run_id, step_id, 1, {"type": "E", "message": "m"})
        assert not status.beat(conn, step_id, 1)
        assert status.beat(conn, step_id, 2)


def test_an_attempt_from_before_a_resume_cannot_touch_the_resumed_step(db_url):
    # given a step running its attempt 1 when its run is cancelled (the revoke never came),
    # and the run resumed and the step claimed again
    run_id, step_id = make_run(db_url, S.RUNNING)
    with get_engine(db_url).begin() as conn:
        assert status.cancel_run(conn, run_id) is not None
        assert status.resume_run(conn, run_id) == 0
        claimed = status.claim_step(conn, run_id, step_id, "t-2")
        # then the new attempt has a number of its own, with a fresh budget of 3 after it
        assert claimed is not None and (claimed.attempt, claimed.max_attempts) == (2, 4)
        # and attempt 1, still running somewhere, can do nothing to the new one
        assert not status.succeed_step(conn, run_id, step_id, 1, {})
        assert not status.fail_step(conn, run_id, step_id, 1, {"type": "E", "message": "m"})
        assert not status.requeue_step(conn, run_id, step_id, 1, ("step.retrying", {}))
        assert not status.record_for_attempt(conn, run_id, step_id, 1, "llm.usage", {})
        assert not status.beat(conn, step_id, 1)
        assert status.beat(conn, step_id, 2)
        # and a second resume gives a fresh budget again, numbering on
        assert status.fail_step(conn, run_id, step_id, 2, {"type": "E", "message": "m"})
        assert status.resume_run(conn, run_id) == 0
        again = status.claim_step(conn, run_id, step_id, "t-3")
        assert again is not None and (again.attempt, again.max_attempts) == (3, 5)
        started = conn.execute(
            select(events.c.payload).where(events.c.step_id == step_id,
                                           events.c.type == "step.started")
            .order_by(events.c.id)).scalars().all()
    assert [e["attempt"] for e in started] == [2, 3]


def test_a_step_queued_again_is_cancelled_as_a_queued_step(db_url):
    # given a running step requeued (a retry waiting out its backoff, or the reaper's requeue)
    run_id, step_id = make_run(db_url, S.RUNNING)
    with get_engine(db_url).begin() as conn:
        assert status.requeue_step(conn, run_id, step_id, 1, ("step.retrying", {}), delay_s=5)
        # when its run is cancelled
        to_revoke = status.cancel_run(conn, run_id)
        finished = conn.execute(
            select(events.c.payload).where(events.c.step_id == step_id,
                                           events.c.type == "step.finished")).scalar_one()
    # then no task is revoked for it (its old task is done: a revoke would signal whatever
    # its process runs now), and it ran for no time in this status
    assert to_revoke == []
    assert finished["duration_s"] == 0.0
