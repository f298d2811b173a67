"""The reaper: finds steps stuck in ``running`` and runs that stalled, and heals them.

A step is stuck when it is running and its last heartbeat (its start, if it never beat) is
older than NOFX_STUCK_AFTER_S, or it has run past its hard time limit plus a grace. With
attempts left it is queued again and its run redispatched from it; without, it ends
``timed_out`` or ``failed`` and its run ``failed``. A run whose due step never arrived
(broker down at submit, a chain lost with a worker) is dispatched again. Every action is
a guarded transition that records ``step.reaped`` with its ``reason`` and ``action``.

Each query reads a partial index (running steps, due queued steps, queued runs), so a tick
costs the same with a million finished steps as with ten. On Postgres an advisory lock lets
only one reaper act at a time, so two beat processes started by mistake do not double-act.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from nofx import status
from nofx.config import Settings, get_settings
from nofx.db import counters
from nofx.db.engine import UNAVAILABLE, get_engine, transaction
from nofx.db.models import components, runs, steps
from nofx.domain import RUN_ACTIVE, RunStatus, StepStatus
from nofx.services import dispatch

log = logging.getLogger(__name__)

REAPER_LOCK_ID = 0x6E6F6678  # "nofx"
HEARTBEAT_LOST, HARD_LIMIT, NEVER_STARTED = "heartbeat_lost", "hard_time_limit", "never_started"


def stuck_steps(settings: Settings | None = None, at: datetime | None = None) -> list[dict[str, Any]]:
    """Running steps the reaper would act on now, each with ``age_s`` and ``reason``."""
    settings = settings or get_settings()
    at = at or status.now()
    silent_since = at - timedelta(seconds=settings.stuck_after_s)
    with transaction() as conn:
        rows = conn.execute(running_steps_query()).mappings().all()
    found = []
    for row in rows:
        reason = _stuck_reason(row, settings, at, silent_since)
        if reason:
            last = row["heartbeat_at"] or row["started_at"] or at
            found.append(dict(row, age_s=round((at - last).total_seconds(), 3), reason=reason))
    return found


def running_steps_query() -> Select:
    """Every running step (read through the partial index of running steps)."""
    return select(steps).where(steps.c.status == StepStatus.RUNNING).order_by(steps.c.heartbeat_at)


def stalled_query(undispatched_before: datetime, overdue_before: datetime,
                  limit: int = 5000) -> Select:
    """Due steps of active runs whose chain never brought them (partial index of due steps):
    never-dispatched runs first, then the longest overdue."""
    return (
        select(steps.c.id, steps.c.run_id, steps.c.tool, steps.c.due_at, runs.c.dispatched_at)
        .join(runs, runs.c.id == steps.c.run_id)
        .where(
            steps.c.status == StepStatus.QUEUED,
            steps.c.due_at.is_not(None),
            runs.c.status.in_(RUN_ACTIVE),
            or_(
                and_(runs.c.dispatched_at.is_(None), steps.c.due_at < undispatched_before),
                steps.c.due_at < overdue_before,
            ),
        )
        .order_by(runs.c.dispatched_at.is_not(None), steps.c.due_at)
        .limit(limit)
    )


def completed_query() -> Select:
    """Running runs whose steps have all succeeded (their last link was lost)."""
    unfinished = select(steps.c.id).where(
        steps.c.run_id == runs.c.id, steps.c.status != StepStatus.SUCCEEDED
    ).exists()
    return select(runs.c.id).where(runs.c.status == RunStatus.RUNNING, ~unfinished).limit(500)


def _stuck_reason(row: Any, settings: Settings, at: datetime, silent_since: datetime) -> str | None:
    if row["started_at"] is not None:
        limit = dispatch.hard_limit_s(row["timeout_s"])
        deadline = row["started_at"] + timedelta(seconds=limit + settings.hard_limit_grace_s)
        if at > deadline:
            return HARD_LIMIT
    last = row["heartbeat_at"] or row["started_at"]
    if last is None or last < silent_since:
        return HEARTBEAT_LOST
    return None


class _Sight:
    """Whether this process's reaper could reach the database, and since when again.

    While the database is unreachable, so are the workers' heartbeats: every running step
    falls silent together. After a tick that could not reach it, the reaper gives
    heartbeats ``NOFX_STUCK_AFTER_S`` to resume before it takes silence for a dead worker
    (a hard time limit is judged as ever). A fresh process (``nofx reap`` by hand) has
    seen no failure and acts at once.
    """

    def __init__(self) -> None:
        self.lost = False
        self.regained_at: float | None = None

    def judging_heartbeats(self, settings: Settings) -> bool:
        if self.lost:
            self.lost, self.regained_at = False, time.monotonic()
        if self.regained_at is None:
            return True
        if time.monotonic() - self.regained_at >= settings.stuck_after_s:
            self.regained_at = None
            return True
        return False


SIGHT = _Sight()


def reap(settings: Settings | None = None) -> dict[str, int]:
    """One reaper tick; returns how many of each action it took."""
    settings = settings or get_settings()
    try:
        return _reap(settings)
    except UNAVAILABLE:
        SIGHT.lost = True
        raise


def _reap(settings: Settings) -> dict[str, int]:
    done = {"requeued": 0, "failed": 0, "redispatched": 0, "finished": 0, "skipped": 0}
    with _single_reaper() as acquired:
        if not acquired:
            done["skipped"] = 1
            log.info("another reaper holds the lock; skipping this tick")
            return done
        judging = SIGHT.judging_heartbeats(settings)
        for step in stuck_steps(settings):
            if step["reason"] == HEARTBEAT_LOST and not judging:
                log.info("not judging a silent heartbeat yet: the database was unreachable "
                         "until moments ago", extra={"run_id": step["run_id"],
                                                     "step_id": step["id"]})
                continue
            done[_heal_stuck(step, settings)] += 1
        done["redispatched"] += _redispatch_stalled(settings)
        done["finished"] += _finish_completed_runs()
        _mark_alive()
    if any(v for k, v in done.items() if k != "skipped"):
        log.info("reaper acted", extra=done)
    return done


def _heal_stuck(step: dict[str, Any], settings: Settings) -> str:
    run_id, step_id, attempt, reason = step["run_id"], step["id"], step["attempt"], step["reason"]
    ids = {"run_id": run_id, "step_id": step_id}
    # Acted on only if still silent: a heartbeat since this tick read the step means its
    # worker is alive (``age_s`` is how long it had been silent then).
    silent_since = None
    if reason == HEARTBEAT_LOST:
        silent_since = status.now() - timedelta(
            seconds=settings.stuck_after_s)
    if attempt < step["max_attempts"]:
        payload = {"reason": reason, "action": "requeued", "attempt": attempt, "age_s": step["age_s"]}
        with transaction() as conn:
            changed = status.requeue_step(conn, run_id, step_id, attempt, ("step.reaped", payload),
                                          silent_since=silent_since)
            if changed:
                _count(conn, reason, "requeued")
        if changed:
            log.warning("stuck step requeued (%s)", reason, extra=ids)
            dispatch.dispatch_run(run_id)
            return "requeued"
        return "skipped"
    error = {
        "type": "StepStuck",
        "message": f"gave up after {attempt} attempt(s): {reason.replace('_', ' ')}",
    }
    final = StepStatus.TIMED_OUT if reason == HARD_LIMIT else StepStatus.FAILED
    with transaction() as conn:
        changed = status.fail_step(
            conn, run_id, step_id, attempt, error, status=final,
            reaped={"reason": reason, "action": "failed", "attempt": attempt, "age_s": step["age_s"]},
            silent_since=silent_since,
        )
        if changed:
            _count(conn, reason, "failed")
    if changed:
        log.error("stuck step failed: %s", error["message"], extra=ids)
        return "failed"
    return "skipped"


#: Runs sent again in one tick at most; the query reads further (past steps left waiting
#: behind a backlog), so a backlog on one queue hides no lost message on another.
REDISPATCH_PER_TICK = 500


def overdue_after_s(settings: Settings) -> float:
    """How long a due step may wait for its message before it counts as overdue."""
    return max(settings.stuck_after_s * 4, 120)


def backlog_patience_s(settings: Settings) -> float:
    """How long an overdue step may wait while its queue still holds messages."""
    return max(overdue_after_s(settings) * 10, 1800)


def _redispatch_stalled(settings: Settings) -> int:
    """Send again runs whose due step never arrived; undispatched runs go first and fast.

    An overdue step whose queue still holds messages is most likely waiting in it, behind
    a backlog (long LLM steps, a burst of runs): sending its run again would only add a
    duplicate a tick, each one more message for the workers to wade through. It is sent
    again once its queue has no message waiting (its own is lost, then), or once it has
    waited ``backlog_patience_s``, whichever comes first.
    """
    at = status.now()
    undispatched_before = at - timedelta(seconds=min(settings.reap_every_s, 5))
    overdue_before = at - timedelta(seconds=overdue_after_s(settings))
    patient_until = at - timedelta(seconds=backlog_patience_s(settings))
    with transaction() as conn:
        rows = conn.execute(stalled_query(undispatched_before, overdue_before)).all()
    count, depths, waiting = 0, _QueueDepths(), Counter[str]()
    for row in rows:
        if count >= REDISPATCH_PER_TICK:
            break
        reason = "never_dispatched" if row.dispatched_at is None else NEVER_STARTED
        if reason == NEVER_STARTED and row.due_at >= patient_until:
            queue = queue_of(row.run_id, row.id, row.tool)
            if depths.ready(queue):
                waiting[queue] += 1
                continue
        payload = {"reason": reason, "action": "redispatched"}
        with transaction() as conn:
            if not status.redispatched(conn, row.run_id, row.id, payload):
                continue
            _count(conn, reason, "redispatched")
        log.warning("run redispatched (%s)", reason, extra={"run_id": row.run_id, "step_id": row.id})
        dispatch.dispatch_run(row.run_id)
        count += 1
    for queue, n in waiting.items():
        log.info("%d overdue step(s) left waiting: queue %s holds %d message(s)", n, queue,
                 depths.ready(queue), extra={"queue": queue, "overdue": n})
    return count


def queue_of(run_id: str, step_id: str, tool: str) -> str:
    """The queue a step's task goes to, as the Celery app routes it (``task_routes``)."""
    from nofx.worker.app import app

    route = app.amqp.router.route({}, "nofx.run_step", (run_id, step_id), {"tool": tool})
    queue = route.get("queue")
    return str(getattr(queue, "name", queue) or app.conf.task_default_queue)


def ready_messages(queue: str) -> int | None:
    """Messages waiting in ``queue`` (not yet delivered to a worker); ``None`` if unknown."""
    from nofx.worker.app import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            try:
                declared = conn.default_channel.queue_declare(queue=queue, passive=True)
            except conn.channel_errors:
                return 0  # no such queue (Redis drops an empty one): nothing waits in it
            return int(declared.message_count)
    except Exception:  # unknown: the caller acts as if the queue were empty
        log.warning("could not read the length of queue %s", queue, exc_info=True)
        return None


class _QueueDepths:
    """Each queue's ready messages, read once a tick."""

    def __init__(self) -> None:
        self._seen: dict[str, int | None] = {}

    def ready(self, queue: str) -> int:
        if queue not in self._seen:
            self._seen[queue] = ready_messages(queue)
        return self._seen[queue] or 0


def _finish_completed_runs() -> int:
    """Runs still ``running`` with every step succeeded lost their last link: end them."""
    with transaction() as conn:
        run_ids = conn.execute(completed_query()).scalars().all()
    finished = 0
    for run_id in run_ids:
        with transaction() as conn:
            ended = status.finish_run(conn, run_id)
        if ended:
            log.warning("run ended by the reaper: every step had succeeded, its end was lost",
                        extra={"run_id": run_id})
            finished += 1
    return finished


def _count(conn: Connection, reason: str, action: str) -> None:
    """Add one to the durable ``steps_reaped`` counter (read by /metrics)."""
    counters.bump(conn, {("steps_reaped", f"reason={reason},action={action}"): 1})


def _mark_alive() -> None:
    at = status.now()
    with transaction() as conn:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(components).values(name="reaper", kind="reaper", seen_at=at, info={})
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"seen_at": at}))


@contextmanager
def _single_reaper() -> Iterator[bool]:
    """Hold a Postgres advisory lock for the tick, in one transaction of its own.

    A transaction-scoped lock is released by the server when that transaction ends, however
    the tick ends, and stays on one server connection behind PgBouncer in transaction mode.
    """
    engine = get_engine()
    if engine.dialect.name != "postgresql":
        yield True  # SQLite serialises writers itself; guarded transitions do the rest
        return
    with engine.connect() as conn, conn.begin():
        yield bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:id)"),
                                {"id": REAPER_LOCK_ID}).scalar())


def last_run_at() -> datetime | None:
    """When the reaper last finished a tick."""
    with transaction() as conn:
        return conn.execute(
            select(func.max(components.c.seen_at)).where(components.c.kind == "reaper")
        ).scalar()


