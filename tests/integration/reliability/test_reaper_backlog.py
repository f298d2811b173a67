"""An overdue step behind a backlog is waiting, not lost: the reaper resends it only once its
queue is empty, or after ``backlog_patience_s``; a run that never reached the broker, at once."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import select, update

from nofx import status
from nofx.config import get_settings
from nofx.db.engine import transaction
from nofx.db.models import events, runs, steps
from nofx.services import reaper
from tests.conftest import AMQP_URL, REDIS_URL
from tests.support.ops import reaper_paused


def overdue_run(waited: timedelta, dispatched: bool = True) -> tuple[str, str]:
    """A queued run whose first step has been due for ``waited`` and never started."""
    run_id, step_id = status.new_id(), status.new_id()
    since = status.now() - waited
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="overdue", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "e", "tool": "echo", "inputs": {},
            "max_attempts": 3, "timeout_s": 30.0}])
        conn.execute(update(steps).where(steps.c.id == step_id).values(due_at=since))
        conn.execute(update(runs).where(runs.c.id == run_id)
                     .values(dispatched_at=since if dispatched else None))
    return run_id, step_id


def reaped(run_id: str) -> list[dict]:
    with transaction() as conn:
        return list(conn.execute(select(events.c.payload).where(
            events.c.run_id == run_id, events.c.type == "step.reaped")).scalars())


def cancel(run_id: str) -> None:
    with transaction() as conn:
        status.cancel_run(conn, run_id)


@pytest.fixture()
def queue_holding(monkeypatch: pytest.MonkeyPatch):
    """Make every queue read as holding ``n`` ready messages (what the broker would say)."""
    def _hold(n: int) -> list[str]:
        asked: list[str] = []
        monkeypatch.setattr(reaper, "ready_messages", lambda queue: asked.append(queue) or n)
        return asked
    return _hold


def test_an_overdue_step_whose_queue_holds_messages_is_left_waiting(
        database, queue_holding, caplog):
    run_id, _ = overdue_run(timedelta(minutes=10))
    try:
        with reaper_paused():  # beat's reaper, if one runs, must not act meanwhile
            asked = queue_holding(7)
            with caplog.at_level(logging.INFO):
                reaper._redispatch_stalled(get_settings())
            assert reaped(run_id) == []
            assert asked and set(asked) == {get_settings().queue}  # echo's queue, read once
            assert any("left waiting" in r.getMessage() and "holds 7 message" in r.getMessage()
                       for r in caplog.records)

            # once the queue is empty, its message must have been lost: it is sent again
            queue_holding(0)
            reaper._redispatch_stalled(get_settings())
            assert reaped(run_id) == [{"reason": "never_started", "action": "redispatched"}]
    finally:
        cancel(run_id)


def test_a_step_overdue_past_the_backlog_patience_is_sent_again_whatever_the_queue_holds(
        database, queue_holding):
    patience = reaper.backlog_patience_s(get_settings())
    run_id, _ = overdue_run(timedelta(seconds=patience + 60))
    try:
        with reaper_paused():
            queue_holding(7)
            reaper._redispatch_stalled(get_settings())
            assert [p["reason"] for p in reaped(run_id)] == ["never_started"]
    finally:
        cancel(run_id)


def test_a_run_that_never_reached_the_broker_is_sent_whatever_the_queue_holds(
        database, queue_holding):
    run_id, _ = overdue_run(timedelta(seconds=30), dispatched=False)
    try:
        with reaper_paused():
            queue_holding(7)
            reaper._redispatch_stalled(get_settings())
            assert [p["reason"] for p in reaped(run_id)] == ["never_dispatched"]
    finally:
        cancel(run_id)


@pytest.mark.parametrize("broker", [REDIS_URL, AMQP_URL], ids=["redis", "rabbitmq"])
def test_ready_messages_counts_the_messages_waiting_in_a_queue(monkeypatch, broker):
    # given a queue on a real broker holding three messages
    name = f"{get_settings().queue}-depth-{uuid.uuid4().hex[:8]}"  # the session cleans it up
    queue = Queue(name, Exchange(name), routing_key=name)
    with Connection(broker) as conn:
        producer = conn.Producer()
        for i in range(3):
            producer.publish({"n": i}, exchange=queue.exchange, routing_key=name,
                             declare=[queue], serializer="json")
    from nofx.worker.app import app

    monkeypatch.setattr(app, "connection_for_write", lambda *a, **k: Connection(broker))
    try:
        # then the reaper reads three; and a queue that does not exist holds nothing
        assert reaper.ready_messages(name) == 3
        assert reaper.ready_messages(f"{name}-none") == 0
    finally:
        with Connection(broker) as conn:
            queue(conn.default_channel).delete()
            queue.exchange(conn.default_channel).delete()


@pytest.fixture()
def only_these_runs(monkeypatch: pytest.MonkeyPatch):
    """The reaper's stalled-steps query, limited to this test's runs (the session's database
    is shared), and one run sent again a tick."""
    mine: list[str] = []
    query = reaper.stalled_query
    monkeypatch.setattr(reaper, "stalled_query",
                        lambda *a, **k: query(*a, **k).where(steps.c.run_id.in_(mine)))
    monkeypatch.setattr(reaper, "REDISPATCH_PER_TICK", 1)
    return mine


def test_steps_left_waiting_use_none_of_a_ticks_budget_and_hide_no_lost_message(
        database, monkeypatch, only_these_runs):
    # given two overdue steps behind a backlog on one queue, and a third, due more recently,
    # whose message was lost on a queue with nothing in it (routing by tool)
    waiting = [overdue_run(timedelta(minutes=20))[0] for _ in range(2)]
    lost, _ = overdue_run(timedelta(minutes=10))
    only_these_runs.extend([*waiting, lost])
    monkeypatch.setattr(reaper, "queue_of",
                        lambda run_id, step_id, tool: "idle" if run_id == lost else "busy")
    monkeypatch.setattr(reaper, "ready_messages", lambda queue: 7 if queue == "busy" else 0)
    try:
        with reaper_paused():
            # when a tick that may send one run looks at them
            assert reaper._redispatch_stalled(get_settings()) == 1
        # then the lost one was sent; the waiting ones were skipped without using that one
        assert [p["reason"] for p in reaped(lost)] == ["never_started"]
        assert [reaped(run_id) for run_id in waiting] == [[], []]
    finally:
        for run_id in [*waiting, lost]:
            cancel(run_id)


def test_a_run_that_never_reached_the_broker_goes_before_long_overdue_ones(
        database, queue_holding, only_these_runs):
    overdue, _ = overdue_run(timedelta(minutes=20))
    undispatched, _ = overdue_run(timedelta(seconds=30), dispatched=False)
    only_these_runs.extend([overdue, undispatched])
    queue_holding(0)
    try:
        with reaper_paused():
            assert reaper._redispatch_stalled(get_settings()) == 1
        assert [p["reason"] for p in reaped(undispatched)] == ["never_dispatched"]
        assert reaped(overdue) == []
    finally:
        cancel(overdue)
        cancel(undispatched)
