"""The only module that writes a run's or a step's status.

Every transition is one guarded statement (``UPDATE ... WHERE id = :id AND status IN (...)
RETURNING ...``) that writes its event in the caller's transaction and says whether it
happened. When nothing matched, nothing changed and no event was written: a task delivered
twice, a reaper racing a worker, a cancel racing a finish all end with one transition and
one event.

Each transition first locks its run's row, so a run's events are written one transaction at
a time and their ids grow in commit order (a reader resuming ``after=id`` misses nothing).
Each also adds to the status counters behind ``/metrics`` (``nofx/db/counters.py``), once,
at its end.

The three hot writes, a run's creation and a step's claim and success, are one statement
each on Postgres: a data-modifying CTE for the creation and functions from migration 0003
for the others, doing exactly what the Python below does, statement for statement, without
a round trip per statement (tests hold both paths to the same rows). ``ONE_STATEMENT =
False`` makes Postgres take the Python path too.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import JSONB

from nofx.db import counters
from nofx.db.counters import Tally, run_status, step_status
from nofx.db.engine import autocommit, fetch_one_by_driver, get_engine, held_connection, transaction
from nofx.db.models import UTCDateTime, artifacts, events, runs, steps
from nofx.domain import RUN_ACTIVE, RUN_RESUMABLE, STEP_ACTIVE, RunStatus, StepStatus

Q, R, OK = StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.SUCCEEDED
#: A step's ``index`` column, labelled so rows do not confuse it with ``tuple.index``.
POSITION = steps.c.index.label("position")
#: On Postgres, create a run, claim a step and succeed it in one statement each.
ONE_STATEMENT = True


def now() -> datetime:
    """The current time in UTC; every timestamp NOFX writes comes from here."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh UUID string for a run, step or artifact."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class ClaimedStep:
    """What a worker needs to run a step it has just claimed."""

    id: str
    run_id: str
    index: int
    name: str
    tool: str
    inputs: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_s: float
    started_at: datetime


@dataclass(frozen=True)
class NewArtifact:
    """An artifact whose bytes are already stored; its row is written with the step's success."""

    name: str
    content_type: str
    size: int
    sha256: str
    storage_key: str
    id: str = ""


# -- events --------------------------------------------------------------------------------


def record(
    conn: Connection, run_id: str, step_id: str | None, type_: str, payload: dict[str, Any]
) -> None:
    """Append one event to a run's log."""
    conn.execute(
        insert(events).values(
            run_id=run_id, step_id=step_id, type=type_, payload=payload, created_at=now()
        )
    )


def record_for_attempt(
    conn: Connection, run_id: str, step_id: str, attempt: int, type_: str,
    payload: dict[str, Any],
) -> bool:
    """Append an event for a step only while that attempt still holds it (e.g. ``llm.usage``).

    Under the run's lock, like every other writer of the run's events: their ids then
    commit in order, so a reader that resumes after an id misses none.
    """
    _lock_run(conn, run_id)
    row = conn.execute(
        select(steps.c.id).where(
            steps.c.id == step_id, steps.c.run_id == run_id, steps.c.status == R,
            steps.c.attempt == attempt,
        )
    ).first()
    if row is None:
        return False
    record(conn, run_id, step_id, type_, payload)
    return True


def _lock_run(conn: Connection, run_id: str) -> RunStatus | None:
    row = conn.execute(
        select(runs.c.status).where(runs.c.id == run_id).with_for_update()
    ).first()
    return RunStatus(row.status) if row else None


# -- runs ----------------------------------------------------------------------------------


def json_size(value: Any) -> int:
    """How many bytes ``value`` takes in JSON as the API writes it (ASCII, compact).

    A whole float Python writes with an exponent (``1e+20``) is counted as its digits: jsonb
    keeps numbers as ``numeric`` and gives them back written out, which the API then writes
    as an integer (``100000000000000000000``)."""
    text = json.dumps(value, separators=(",", ":"))
    if "e+" not in text:  # no such float (the usual case): no second pass
        return len(text)
    return len(json.dumps(_written_out(value), separators=(",", ":")))


def _written_out(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value) if abs(value) >= 1e16 else value
    if isinstance(value, dict):
        return {k: _written_out(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_written_out(v) for v in value]
    return value


def create_run(
    conn: Connection,
    *,
    run_id: str,
    goal: str,
    plan: dict[str, Any],
    step_rows: Sequence[dict[str, Any]],
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    dispatched: bool = False,
) -> dict[str, Any]:
    """Insert a queued run, its queued steps and ``run.created``.

    ``dispatched``: the caller sends the run's chain right after this commits, so the run
    is written as dispatched (``dispatched_at``) rather than marked in a second write; if
    sending fails, :func:`mark_dispatched` (``dispatched=False``) takes the mark back.

    Returns the run as it was written, with ``steps`` and (no) ``artifacts``: the shape a
    read of the run gives, without reading it back.
    """
    at = now()
    run = _row(runs, id=run_id, status=RunStatus.QUEUED, goal=goal, plan=plan,
               plan_bytes=json_size(plan), created_at=at, updated_at=at,
               idempotency_key=idempotency_key, request_hash=request_hash,
               dispatched_at=at if dispatched else None)
    written = [
        _row(steps, **row, run_id=run_id, status=Q, attempt=0, updated_at=at,
             due_at=at if row["index"] == 0 else None)
        for row in step_rows
    ]
    created = {"goal": goal, "steps": len(step_rows)}
    if _one_statement(conn):
        conn.execute(_CREATE_SQL, {
            "run": {k: run[k] for k in _CREATE_RUN_KEYS},
            "steps": [{k: row[k] for k in _CREATE_STEP_KEYS} for row in written],
            "created": created, "at": at, "shard": counters.shard(),
            "dispatched_at": run["dispatched_at"],
        })
    else:
        conn.execute(insert(runs).values(run))
        conn.execute(insert(steps), written)
        record(conn, run_id, None, "run.created", created)
        tally = Counter({run_status(RunStatus.QUEUED): 1})
        tally.update(step_status(row["tool"], Q) for row in step_rows)
        counters.bump(conn, tally)
    return dict(run, steps=written, artifacts=[])


_CREATE_RUN_KEYS = ("id", "status", "goal", "plan", "plan_bytes", "idempotency_key",
                    "request_hash")
_CREATE_STEP_KEYS = ("id", "run_id", "index", "name", "tool", "status", "inputs",
                     "max_attempts", "timeout_s")
#: ``create_run`` on Postgres: the run, its steps, ``run.created`` and the counters in one
#: statement (foreign keys are checked at its end, when the run row exists).
_CREATE_SQL = text("""
WITH run AS (
  INSERT INTO runs (id, status, goal, plan, plan_bytes, idempotency_key, request_hash,
                    created_at, updated_at, dispatched_at)
  SELECT r.id, r.status, r.goal, r.plan, r.plan_bytes, r.idempotency_key, r.request_hash,
         :at, :at, :dispatched_at
  FROM jsonb_to_record(:run) AS r(id text, status text, goal text, plan jsonb,
                                  plan_bytes integer, idempotency_key text, request_hash text)
  RETURNING id
), step AS (
  INSERT INTO steps (id, run_id, index, name, tool, status, inputs, attempt, max_attempts,
                     timeout_s, due_at, updated_at)
  SELECT s.id, s.run_id, s.index, s.name, s.tool, s.status, s.inputs, 0, s.max_attempts,
         s.timeout_s, CASE WHEN s.index = 0 THEN CAST(:at AS timestamptz) END, :at
  FROM jsonb_to_recordset(:steps) AS s(id text, run_id text, index integer, name text,
                                       tool text, status text, inputs jsonb,
                                       max_attempts integer, timeout_s double precision)
  RETURNING tool
), event AS (
  INSERT INTO events (run_id, step_id, type, payload, created_at)
  SELECT id, NULL, 'run.created', :created, :at FROM run
)
INSERT INTO counters AS c (name, labels, shard, value)
SELECT name, labels, CAST(:shard AS smallint), n FROM (
  SELECT 'runs' AS name, 'status=queued' AS labels, 1 AS n FROM run
  UNION ALL
  SELECT 'steps', 'tool=' || tool || ',status=queued', count(*) FROM step GROUP BY tool
) AS tally
ORDER BY name COLLATE "C", labels COLLATE "C"  -- Python's order (counters.bump): no deadlock
ON CONFLICT (name, labels, shard) DO UPDATE SET value = c.value + excluded.value
""").bindparams(bindparam("run", type_=JSONB), bindparam("steps", type_=JSONB),
                bindparam("created", type_=JSONB), bindparam("at", type_=UTCDateTime),
                bindparam("dispatched_at", type_=UTCDateTime))


def _row(table: Any, **values: Any) -> dict[str, Any]:
    """A whole row of ``table``: ``values``, and ``None`` for every other column."""
    return {column.name: values.get(column.name) for column in table.columns}


def mark_dispatched(conn: Connection, run_id: str, dispatched: bool = True) -> bool:
    """Note that the run's chain reached the broker (not a status change, so no event), or,
    with ``dispatched=False``, take back the mark :func:`create_run` wrote: the chain never
    reached the broker, and the reaper sends runs never dispatched on its next tick.

    One statement: callers may run it on an autocommit connection.
    """
    at = now()
    result = conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status.in_(RUN_ACTIVE))
        .values(dispatched_at=at if dispatched else None, updated_at=at)
    )
    return result.rowcount > 0


def _end_run(conn: Connection, run_id: str, status: RunStatus, tally: Tally) -> bool:
    at = now()
    row = conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status.in_(RUN_ACTIVE))
        .values(status=status, ended_at=at, updated_at=at)
        .returning(runs.c.id)
    ).first()
    if row is not None:
        record(conn, run_id, None, "run.finished", {"status": str(status)})
        tally[run_status(status)] += 1
    return row is not None


def finish_run(conn: Connection, run_id: str) -> bool:
    """``running -> succeeded`` once every step has succeeded."""
    if _lock_run(conn, run_id) != RunStatus.RUNNING:
        return False
    tally: Tally = Counter()
    finished = _finish_if_all_succeeded(conn, run_id, tally)
    counters.bump(conn, tally)
    return finished


def _finish_if_all_succeeded(conn: Connection, run_id: str, tally: Tally) -> bool:
    unfinished = exists().where(steps.c.run_id == run_id, steps.c.status != OK)
    if conn.execute(select(unfinished)).scalar():
        return False
    return _end_run(conn, run_id, RunStatus.SUCCEEDED, tally)


def cancel_run(conn: Connection, run_id: str) -> list[str] | None:
    """Cancel an active run: its queued and running steps end ``cancelled``.

    Returns the Celery task ids of the steps that were running (to revoke), or ``None``
    when the run was not active.
    """
    if _lock_run(conn, run_id) not in RUN_ACTIVE:
        return None
    error = {"type": "Cancelled", "message": "the run was cancelled"}
    tally: Tally = Counter()
    ended = _end_steps(conn, run_id, STEP_ACTIVE, StepStatus.CANCELLED, error, tally)
    _end_run(conn, run_id, RunStatus.CANCELLED, tally)
    counters.bump(conn, tally)
    return [task_id for status, task_id in ended if status == R and task_id]


def resume_run(conn: Connection, run_id: str) -> int | None:
    """``failed|cancelled -> queued``: unsuccessful steps are queued again, fresh attempts.

    Attempts number on (an attempt from before the resume, still running on a worker whose
    revoke never came, must not pass for the new one: every guard tells attempts apart by
    number); each step's budget starts again instead: ``max_attempts`` becomes the attempts
    made so far plus ``attempt_budget``. Succeeded steps keep their outputs and artifacts.
    Returns the index of the first step to run, or ``None`` when it cannot be resumed.
    """
    if _lock_run(conn, run_id) not in RUN_RESUMABLE:
        return None
    at = now()
    budget = func.coalesce(steps.c.attempt_budget, steps.c.max_attempts)
    rows = conn.execute(
        update(steps)
        .where(steps.c.run_id == run_id, steps.c.status != OK)
        .values(
            status=Q, attempt_budget=budget, max_attempts=steps.c.attempt + budget,
            error=None, outputs=None, started_at=None, ended_at=None, heartbeat_at=None,
            task_id=None, updated_at=at,
        )
        .returning(steps.c.id, POSITION, steps.c.tool)
    ).all()
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(status=RunStatus.QUEUED, ended_at=None, dispatched_at=None, updated_at=at)
    )
    first = min((row.position for row in rows), default=None)
    _set_due(conn, run_id, first, at)
    record(conn, run_id, None, "run.resumed", {"from_index": first, "steps": len(rows)})
    for row in sorted(rows, key=lambda r: r.position):
        record(conn, run_id, row.id, "step.queued", {"reason": "run resumed"})
    tally = Counter({run_status(RunStatus.QUEUED): 1})
    tally.update(step_status(row.tool, Q) for row in rows)
    counters.bump(conn, tally)
    return first


# -- steps ---------------------------------------------------------------------------------


def claim_step(conn: Connection, run_id: str, step_id: str, task_id: str) -> ClaimedStep | None:
    """``queued -> running`` for one more attempt, if every earlier step has succeeded.

    Also starts the run (``queued -> running``, ``run.started``) on its first claim.
    """
    if _one_statement(conn):
        return _claim_step_sql(conn, run_id, step_id, task_id)
    current = _lock_run(conn, run_id)
    if current not in RUN_ACTIVE:
        return None
    at = now()
    earlier = steps.alias("earlier")
    earlier_unfinished = exists().where(
        earlier.c.run_id == steps.c.run_id,
        earlier.c.index < steps.c.index,
        earlier.c.status != OK,
    )
    row = conn.execute(
        update(steps)
        .where(
            steps.c.id == step_id,
            steps.c.run_id == run_id,
            steps.c.status == Q,
            steps.c.attempt < steps.c.max_attempts,
            ~earlier_unfinished,
        )
        .values(
            status=R, attempt=steps.c.attempt + 1, started_at=at, heartbeat_at=at,
            ended_at=None, error=None, task_id=task_id, due_at=None, updated_at=at,
        )
        .returning(
            POSITION, steps.c.name, steps.c.tool, steps.c.inputs, steps.c.attempt,
            steps.c.max_attempts, steps.c.timeout_s,
        )
    ).first()
    if row is None:
        return None
    tally = Counter({step_status(row.tool, R): 1})
    if current == RunStatus.QUEUED:
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(status=RunStatus.RUNNING, started_at=func.coalesce(runs.c.started_at, at),
                    updated_at=at)
        )
        record(conn, run_id, None, "run.started", {})
        tally[run_status(RunStatus.RUNNING)] += 1
    record(conn, run_id, step_id, "step.started", {"attempt": row.attempt, "task_id": task_id})
    counters.bump(conn, tally)
    return ClaimedStep(
        id=step_id, run_id=run_id, index=row.position, name=row.name, tool=row.tool,
        inputs=row.inputs, attempt=row.attempt, max_attempts=row.max_attempts,
        timeout_s=row.timeout_s, started_at=at,
    )


#: Sent through the driver (``fetch_one_by_driver``): the worker's two statements a step.
_CLAIM_SQL = "SELECT * FROM nofx_claim_step(%s, %s, %s, %s, %s::smallint)"


def _claim_step_sql(conn: Connection, run_id: str, step_id: str,
                    task_id: str) -> ClaimedStep | None:
    at = now()
    row = fetch_one_by_driver(conn, _CLAIM_SQL,
                              (run_id, step_id, task_id, at, counters.shard()))
    if row is None:
        return None
    position, name, tool, inputs, attempt, max_attempts, timeout_s = row
    return ClaimedStep(
        id=step_id, run_id=run_id, index=position, name=name, tool=tool, inputs=inputs,
        attempt=attempt, max_attempts=max_attempts, timeout_s=timeout_s, started_at=at,
    )


def beat(conn: Connection, step_id: str, attempt: int) -> bool:
    """Refresh a running step's heartbeat; ``False`` means the attempt no longer holds it."""
    result = conn.execute(
        update(steps)
        .where(steps.c.id == step_id, steps.c.status == R, steps.c.attempt == attempt)
        .values(heartbeat_at=now())
    )
    return result.rowcount > 0


def succeed_step(
    conn: Connection,
    run_id: str,
    step_id: str,
    attempt: int,
    outputs: dict[str, Any],
    new_artifacts: Iterable[NewArtifact] = (),
) -> bool:
    """``running -> succeeded`` with outputs; the artifacts' rows and events come with it."""
    if _one_statement(conn):
        return _succeed_step_sql(conn, run_id, step_id, attempt, outputs, new_artifacts)
    _lock_run(conn, run_id)
    at = now()
    row = conn.execute(
        update(steps)
        .where(steps.c.id == step_id, steps.c.status == R, steps.c.attempt == attempt)
        .values(status=OK, outputs=outputs, ended_at=at, updated_at=at)
        .returning(steps.c.started_at, POSITION, steps.c.tool)
    ).first()
    if row is None:
        return False
    next_is_due = _set_due(conn, run_id, row.position + 1, at)
    for artifact in new_artifacts:
        _insert_artifact(conn, run_id, step_id, artifact)
    record(conn, run_id, step_id, "step.finished", {
        "status": str(OK), "error": None, "attempt": attempt,
        "duration_s": _seconds(row.started_at, at),
    })
    tally = Counter({step_status(row.tool, OK): 1})
    if not next_is_due:
        # The last step: the run ends with it, not one Celery hop later in ``finish_run``.
        _finish_if_all_succeeded(conn, run_id, tally)
    counters.bump(conn, tally)
    return True


_SUCCEED_SQL = "SELECT nofx_succeed_step(%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s::smallint)"


def _succeed_step_sql(conn: Connection, run_id: str, step_id: str, attempt: int,
                      outputs: dict[str, Any], new_artifacts: Iterable[NewArtifact]) -> bool:
    stored = [
        {"id": a.id or new_id(), "name": a.name, "content_type": a.content_type,
         "size": a.size, "sha256": a.sha256, "storage_key": a.storage_key}
        for a in new_artifacts
    ]
    row = fetch_one_by_driver(conn, _SUCCEED_SQL, (
        run_id, step_id, attempt, json.dumps(outputs), json.dumps(stored), now(),
        counters.shard(),
    ))
    return bool(row[0])


@contextmanager
def write_connection() -> Iterator[Connection]:
    """The connection for :func:`create_run`, :func:`claim_step` and :func:`succeed_step`:
    autocommit on Postgres, where each is one statement (one round trip); a transaction
    elsewhere (``autocommit()`` is one on SQLite). A worker's steps use
    :func:`step_connection` for the last two."""
    with (autocommit() if ONE_STATEMENT else transaction()) as conn:
        yield conn


@contextmanager
def step_connection() -> Iterator[Connection]:
    """The connection for a worker's :func:`claim_step` and :func:`succeed_step`: on
    Postgres, an autocommit connection the worker's thread keeps checked out between steps
    (``held_connection``: two writes a step, no pool checkout around each); elsewhere what
    :func:`write_connection` gives."""
    if ONE_STATEMENT and get_engine().dialect.name == "postgresql":
        with held_connection() as conn:
            yield conn
    else:
        with write_connection() as conn:
            yield conn


def _one_statement(conn: Connection) -> bool:
    """Whether :func:`create_run`, :func:`claim_step` and :func:`succeed_step` are one
    statement on ``conn`` (so they may run on an autocommit connection: one round trip)."""
    return ONE_STATEMENT and conn.dialect.name == "postgresql"


def _insert_artifact(conn: Connection, run_id: str, step_id: str, a: NewArtifact) -> None:
    artifact_id = a.id or new_id()
    conn.execute(
        insert(artifacts).values(
            id=artifact_id, run_id=run_id, step_id=step_id, name=a.name,
            content_type=a.content_type, size=a.size, sha256=a.sha256,
            storage_key=a.storage_key, created_at=now(),
        )
    )
    record(conn, run_id, step_id, "artifact.created", {
        "artifact_id": artifact_id, "name": a.name, "size": a.size, "sha256": a.sha256,
    })


def fail_step(
    conn: Connection,
    run_id: str,
    step_id: str,
    attempt: int | None,
    error: dict[str, Any],
    *,
    status: StepStatus = StepStatus.FAILED,
    from_statuses: Sequence[StepStatus] = (R,),
    reaped: dict[str, Any] | None = None,
    silent_since: datetime | None = None,
) -> bool:
    """End a step ``failed`` or ``timed_out``; the rest of its run is cancelled, the run fails.

    ``attempt=None`` matches any attempt (the reaper failing a step that gave up).
    ``reaped`` (``reason``, ``action``) also records ``step.reaped`` first.
    ``silent_since``: only if the step has not beaten since (the reaper's guard).
    """
    _lock_run(conn, run_id)
    at = now()
    guard = [steps.c.id == step_id, steps.c.status.in_(from_statuses)]
    if attempt is not None:
        guard.append(steps.c.attempt == attempt)
    if silent_since is not None:
        guard.append(_silent_since(silent_since))
    row = conn.execute(
        update(steps)
        .where(*guard)
        .values(status=status, error=error, ended_at=at, updated_at=at)
        .returning(steps.c.started_at, steps.c.attempt, steps.c.tool)
    ).first()
    if row is None:
        return False
    if reaped is not None:
        record(conn, run_id, step_id, "step.reaped", reaped)
    record(conn, run_id, step_id, "step.finished", {
        "status": str(status), "error": error, "attempt": row.attempt,
        "duration_s": _seconds(row.started_at, at),
    })
    skipped = {"type": "Skipped", "message": f"an earlier step ended {status}"}
    tally = Counter({step_status(row.tool, status): 1})
    _end_steps(conn, run_id, STEP_ACTIVE, StepStatus.CANCELLED, skipped, tally)
    _end_run(conn, run_id, RunStatus.FAILED, tally)
    counters.bump(conn, tally)
    return True


def requeue_step(
    conn: Connection,
    run_id: str,
    step_id: str,
    attempt: int,
    event: tuple[str, dict[str, Any]],
    delay_s: float = 0.0,
    silent_since: datetime | None = None,
) -> bool:
    """``running -> queued`` to be tried again (a retry, or the reaper); writes ``event``.

    ``silent_since``: only if the step has not beaten since (the reaper's guard: a worker
    that beat between the reaper's read and this write still holds its step).
    """
    _lock_run(conn, run_id)
    at = now()
    guard = [steps.c.id == step_id, steps.c.status == R, steps.c.attempt == attempt,
             steps.c.attempt < steps.c.max_attempts]
    if silent_since is not None:
        guard.append(_silent_since(silent_since))
    result = conn.execute(
        update(steps)
        .where(*guard)
        .values(status=Q, heartbeat_at=None, started_at=None, task_id=None, updated_at=at,
                due_at=at + timedelta(seconds=delay_s))
        .returning(steps.c.tool)
    ).first()
    if result is None:
        return False
    record(conn, run_id, step_id, event[0], event[1])
    counters.bump(conn, {step_status(result.tool, Q): 1})
    return True


def _silent_since(at: datetime) -> Any:
    """The step's last sign of life (its heartbeat, else its start) is older than ``at``."""
    last = func.coalesce(steps.c.heartbeat_at, steps.c.started_at)
    return or_(last.is_(None), last < at)


def redispatched(conn: Connection, run_id: str, step_id: str, payload: dict[str, Any]) -> bool:
    """Note that a due step was sent again (``step.reaped``); it is due again from now."""
    _lock_run(conn, run_id)
    result = conn.execute(
        update(steps)
        .where(steps.c.id == step_id, steps.c.status == Q)
        .values(due_at=now())
    )
    if result.rowcount:
        record(conn, run_id, step_id, "step.reaped", payload)
    return result.rowcount > 0


def _set_due(conn: Connection, run_id: str, index: int | None, at: datetime) -> bool:
    """Mark the queued step at ``index`` as due from ``at``; whether there was one."""
    if index is None:
        return False
    result = conn.execute(
        update(steps)
        .where(steps.c.run_id == run_id, steps.c.index == index, steps.c.status == Q)
        .values(due_at=at)
    )
    return result.rowcount > 0


def _end_steps(
    conn: Connection,
    run_id: str,
    from_statuses: Sequence[StepStatus],
    status: StepStatus,
    error: dict[str, Any],
    tally: Tally,
) -> list[tuple[str, str | None]]:
    at = now()
    rows = conn.execute(
        update(steps)
        .where(steps.c.run_id == run_id, steps.c.status.in_(from_statuses))
        .values(status=status, error=error, ended_at=at, due_at=None, updated_at=at)
        .returning(steps.c.id, POSITION, steps.c.started_at, steps.c.task_id, steps.c.attempt,
                   steps.c.tool)
    ).all()
    ended: list[tuple[str, str | None]] = []
    for row in sorted(rows, key=lambda r: r.position):
        # The status a step had before is not in RETURNING; a start time means it ran.
        was = R if row.started_at is not None else Q
        record(conn, run_id, row.id, "step.finished", {
            "status": str(status), "error": error, "attempt": row.attempt,
            "duration_s": _seconds(row.started_at, at) if was == R else 0.0,
        })
        ended.append((str(was), row.task_id))
        tally[step_status(row.tool, status)] += 1
    return ended


def _seconds(start: datetime | None, end: datetime) -> float:
    return round((end - start).total_seconds(), 3) if start else 0.0
