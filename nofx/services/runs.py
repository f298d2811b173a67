"""Submitting, reading, cancelling and resuming runs."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, Text, and_, bindparam, cast, func, or_, select
from sqlalchemy.exc import IntegrityError

from nofx import status
from nofx.config import get_settings
from nofx.db.engine import reading, transaction
from nofx.db.models import artifacts, events, runs, steps
from nofx.domain import RUN_TERMINAL
from nofx.errors import Conflict, NotFound
from nofx.services import dispatch
from nofx.tools import get_tool

log = logging.getLogger(__name__)


def submit_run(plan: dict[str, Any], idempotency_key: str | None = None,
               as_sent: dict[str, Any] | None = None) -> tuple[dict, bool]:
    """Store a validated plan as a queued run, then dispatch its chain.

    The run keeps ``as_sent``, the plan exactly as the client sent it, when given; its steps
    get ``plan``'s inputs, as each tool validated them (defaults filled in). Idempotent
    replays compare the validated plan, so two bodies that differ only in how they write
    the same plan are the same request.

    Returns the run and whether it was created now (``False``: an idempotent replay).
    The chain is sent only after the run is committed, which writes it as dispatched
    already (one statement a request); if the broker is down the run stays queued, marked
    undispatched, and the reaper sends it once the broker is back.
    """
    request_hash = _hash(plan) if idempotency_key else None
    if idempotency_key:
        existing = _replay(idempotency_key, request_hash)
        if existing is not None:
            return existing, False
    run_id = status.new_id()
    step_rows = _step_rows(plan)
    try:
        with status.write_connection() as conn:
            run = status.create_run(
                conn, run_id=run_id, goal=plan["goal"],
                plan=plan if as_sent is None else as_sent,
                step_rows=step_rows, idempotency_key=idempotency_key,
                request_hash=request_hash, dispatched=True,
            )
    except IntegrityError:
        # Another request with the same key won the race; answer with its run.
        existing = _replay(idempotency_key, request_hash) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    log.info("run created", extra={"run_id": run_id, "steps": len(plan["steps"])})
    dispatch.dispatch_run(run_id, [dispatch.Link.from_row(row) for row in step_rows],
                          marked=True)
    # Answered from the rows just written (a worker may have started it meanwhile; a read
    # would show that too, a moment later: either is the run as it was).
    return run, True


def _replay(key: str, request_hash: str | None) -> dict | None:
    with reading() as conn:
        row = conn.execute(
            select(runs.c.id, runs.c.request_hash).where(runs.c.idempotency_key == key)
        ).first()
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return get_run(row.id)


def _hash(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _step_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    settings = get_settings()
    rows = []
    for index, step in enumerate(plan["steps"]):
        tool = get_tool(step["tool"])
        default_timeout = tool.default_timeout_s if tool else 300.0
        rows.append({
            "id": status.new_id(),
            "index": index,
            "name": step["name"],
            "tool": step["tool"],
            "inputs": step.get("inputs") or {},
            "max_attempts": step.get("max_attempts") or settings.default_max_attempts,
            "timeout_s": float(step.get("timeout_s") or default_timeout),
        })
    return rows


# -- reading -------------------------------------------------------------------------------


#: A run and its steps in one statement (one snapshot: the run's status and its steps' agree).
_RUN_WITH_STEPS = (
    select(*[c.label(f"run_{c.name}") for c in runs.c],
           *[c.label(f"step_{c.name}") for c in steps.c])
    .select_from(runs.outerjoin(steps, steps.c.run_id == runs.c.id))
    .where(runs.c.id == bindparam("run_id"))
    .order_by(steps.c.index)
)


def get_run(run_id: str) -> dict[str, Any]:
    """A run with its steps (in plan order) and artifacts."""
    run_id = _known_id(run_id, "run")
    with reading() as conn:
        rows = conn.execute(_RUN_WITH_STEPS, {"run_id": run_id}).mappings().all()
        if not rows:
            raise NotFound(f"run {run_id} not found")
        artifact_rows = conn.execute(
            select(artifacts).where(artifacts.c.run_id == run_id)
            .order_by(artifacts.c.created_at, artifacts.c.id)
        ).mappings().all()
    run = {c.name: rows[0][f"run_{c.name}"] for c in runs.c}
    step_rows = [{c.name: row[f"step_{c.name}"] for c in steps.c}
                 for row in rows if row["step_id"] is not None]
    return dict(run, steps=step_rows, artifacts=[dict(a) for a in artifact_rows])


def list_runs(
    status_filter: str | None, limit: int, cursor: tuple[datetime, str] | None,
    max_bytes: int | None = None,
) -> tuple[list[dict[str, Any]], tuple[datetime, str] | None]:
    """Runs newest first, one page after ``cursor`` (keyset), and the next page's cursor.

    A page holds at most ``limit`` runs, and ends early once the plans on it pass about
    ``max_bytes`` (``NOFX_PAGE_MAX_BYTES``, counted with each run's ``plan_bytes``); it
    always holds at least one run. The runs left off are counted in the database and never
    sent to this process."""
    max_bytes = get_settings().page_max_bytes if max_bytes is None else max_bytes
    with reading() as conn:
        rows = [dict(r) for r in conn.execute(
            list_runs_query(status_filter, limit, cursor, max_bytes)).mappings().all()]
    page = rows[:limit]
    more = bool(rows) and rows[0]["found"] > len(page)  # items keep it: the schema leaves it out
    return page, ((page[-1]["created_at"], page[-1]["id"]) if more else None)


def list_runs_query(status_filter: str | None, limit: int,
                    cursor: tuple[datetime, str] | None, max_bytes: int) -> Select:
    """The statement ``GET /runs`` sends: the next ``limit + 1`` runs by the index, then only
    those whose plans before them on the page add up to less than ``max_bytes``, each with
    ``found``, how many the first part found."""
    newest = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
    if status_filter:
        newest = newest.where(runs.c.status == status_filter)
    if cursor:
        created_at, run_id = cursor
        newest = newest.where(
            or_(runs.c.created_at < created_at,
                and_(runs.c.created_at == created_at, runs.c.id < run_id))
        )
    page = newest.subquery("newest")
    order = (page.c.created_at.desc(), page.c.id.desc())
    # Runs from before migration 0006 have no plan_bytes: their stored plan is measured.
    size = func.coalesce(page.c.plan_bytes, func.length(cast(page.c.plan, Text)))
    sized = select(
        page,
        (func.sum(size).over(order_by=order, rows=(None, 0)) - size).label("bytes_before"),
        func.count().over().label("found"),
    ).subquery("sized")
    return (select(*(sized.c[c.name] for c in runs.c), sized.c.found)
            .where(sized.c.bytes_before < max_bytes)
            .order_by(sized.c.created_at.desc(), sized.c.id.desc()))


def list_events(run_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """A run's events in id order, after the event id ``after``."""
    return poll_events(run_id, after, limit)[0]


def poll_events(
    run_id: str, after: int = 0, limit: int = 1000
) -> tuple[list[dict[str, Any]], bool]:
    """A run's events after ``after``, and whether the run had ended before they were read.

    The status is read first, on purpose: the transaction that ends a run also writes
    ``run.finished``, so when the status says "ended" the events read next include it.
    """
    run_id = _known_id(run_id, "run")
    with reading() as conn:
        state = _require_run(conn, run_id)
        rows = conn.execute(
            select(events)
            .where(events.c.run_id == run_id, events.c.id > after)
            .order_by(events.c.id)
            .limit(limit)
        ).mappings().all()
    return [dict(r) for r in rows], state in RUN_TERMINAL


def require_run(run_id: str) -> None:
    """Raise :class:`NotFound` unless the run exists."""
    run_id = _known_id(run_id, "run")
    with reading() as conn:
        _require_run(conn, run_id)


def list_artifacts(run_id: str) -> list[dict[str, Any]]:
    """A run's artifacts, oldest first."""
    run_id = _known_id(run_id, "run")
    with reading() as conn:
        _require_run(conn, run_id)
        rows = conn.execute(
            select(artifacts).where(artifacts.c.run_id == run_id)
            .order_by(artifacts.c.created_at, artifacts.c.id)
        ).mappings().all()
    return [dict(r) for r in rows]


def get_artifact(artifact_id: str) -> dict[str, Any]:
    """One artifact's row."""
    artifact_id = _known_id(artifact_id, "artifact")
    with reading() as conn:
        row = conn.execute(select(artifacts).where(artifacts.c.id == artifact_id)).mappings().first()
    if row is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return dict(row)


def _require_run(conn: Connection, run_id: str) -> str:
    """The run's status; :class:`NotFound` when there is no such run (``run_id`` canonical)."""
    row = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"run {run_id} not found")
    return str(row.status)


def _known_id(value: str, kind: str) -> str:
    """``value`` as NOFX writes ids (a lowercase UUID); anything else names nothing."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"{kind} not found: {value[:100]!r} is not an id NOFX gave out") from None


# -- acting on runs ------------------------------------------------------------------------


def cancel_run(run_id: str) -> dict[str, Any]:
    """Cancel a queued or running run; a running step's task is revoked."""
    run_id = _known_id(run_id, "run")
    with transaction() as conn:
        _require_run(conn, run_id)
        task_ids = status.cancel_run(conn, run_id)
        if task_ids is None:
            _require_run(conn, run_id)  # pruned while this waited for it: 404, not 409
    if task_ids is None:
        raise Conflict(f"run {run_id} has already finished; only queued or running runs cancel")
    log.info("run cancelled", extra={"run_id": run_id})
    dispatch.revoke(run_id, task_ids)
    return get_run(run_id)


def resume_run(run_id: str) -> dict[str, Any]:
    """Resume a failed or cancelled run from its first unsuccessful step."""
    run_id = _known_id(run_id, "run")
    with transaction() as conn:
        _require_run(conn, run_id)
        first = status.resume_run(conn, run_id)
        if first is None:
            _require_run(conn, run_id)  # pruned while this waited for it: 404, not 409
    if first is None:
        raise Conflict(f"run {run_id} is not failed or cancelled; only those can be retried")
    log.info("run resumed", extra={"run_id": run_id, "from_index": first})
    dispatch.dispatch_run(run_id)
    return get_run(run_id)
