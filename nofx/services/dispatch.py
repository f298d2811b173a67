"""Sending runs to the workers: one Celery chain per run, one task per step.

Celery carries ids, never state. The chain starts at the run's first step that has not
succeeded, read from the database, so the same call serves a new run, a resumed run and
the reaper's redispatch of a stalled one. The run ends in the same transaction as its last
step's success; a separate "end of run" link would cost every run one more round trip
through the broker (half the throughput of one-step runs, measured in docs/benchmarks.md)
and guard nothing the reaper does not already: it ends any run whose steps all succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import chain
from sqlalchemy import select

from nofx import status
from nofx.db.engine import autocommit, transaction
from nofx.db.models import steps
from nofx.domain import StepStatus
from nofx.status import POSITION

log = logging.getLogger(__name__)

#: Fail fast when the broker is down: the run is safe in the database and the reaper
#: sends it later, so the API must not hang on a dead broker.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


@dataclass(frozen=True)
class Link:
    """What one link of a run's chain needs to know about its step."""

    id: str
    position: int
    name: str
    tool: str
    timeout_s: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Link:
        return cls(row["id"], row["index"], row["name"], row["tool"], row["timeout_s"])


def dispatch_run(run_id: str, links: Sequence[Link] | None = None, *,
                 marked: bool = False) -> bool:
    """Send the run's chain from its first unsucceeded step; ``False`` if the broker refused.

    ``links`` are the steps to send, when the caller has just written them (a new run);
    otherwise they are read from the database. Once the chain is sent the run is marked
    dispatched, unless it was ``marked`` so when it was written (a new run: one write less
    a request); then a chain the broker refused takes the mark back, so the reaper sends
    the run on its next tick (``never_dispatched``) rather than once it is overdue.
    """
    from nofx.worker.tasks import run_step

    signatures = [
        run_step.si(run_id, link.id, tool=link.tool, step=link.name, index=link.position).set(
            **time_limits(link.timeout_s)
        )
        for link in (links if links is not None else _pending_links(run_id))
    ]
    if not signatures:  # every step already succeeded: nothing to send, the reaper ends it
        return True
    try:
        chain(*signatures).apply_async(retry=True, retry_policy=PUBLISH_RETRY)
    except Exception:  # any broker failure: the run waits in the database for the reaper
        log.warning("could not dispatch run; the reaper will send it", exc_info=True,
                    extra={"run_id": run_id})
        if marked:
            _unmark(run_id)
        return False
    if not marked:
        with autocommit() as conn:  # one statement: one round trip
            status.mark_dispatched(conn, run_id)
    return True


def _unmark(run_id: str) -> None:
    """Take back a new run's dispatched mark; if even that fails, the run is still stored
    and the reaper sends it once its first step is overdue (``never_started``)."""
    try:
        with autocommit() as conn:  # one statement: one round trip
            status.mark_dispatched(conn, run_id, dispatched=False)
    except Exception:
        log.warning("could not mark run undispatched either; the reaper will send it once "
                    "it is overdue", exc_info=True, extra={"run_id": run_id})


def _pending_links(run_id: str) -> list[Link]:
    """The run's steps from its first one that has not succeeded."""
    with transaction() as conn:
        rows = conn.execute(
            select(steps.c.id, POSITION, steps.c.name, steps.c.tool, steps.c.status,
                   steps.c.timeout_s)
            .where(steps.c.run_id == run_id)
            .order_by(steps.c.index)
        ).all()
    first = next((i for i, r in enumerate(rows) if r.status != StepStatus.SUCCEEDED), len(rows))
    return [Link(r.id, r.position, r.name, r.tool, r.timeout_s) for r in rows[first:]]


#: The least time between a step's soft and hard limits. The soft limit interrupts the tool
#: and the step records ``timed_out``; the hard limit kills the process. A pool that checks
#: its limits once a second (prefork without an event loop: the embedded broker of
#: ``nofx dev``) finds both passed at the same check when they are closer, and then kills;
#: a process killed in that pool can take its shared queue's lock with it and hang the pool.
MIN_LIMIT_GAP_S = 3.0


def time_limits(timeout_s: float) -> dict[str, float]:
    """Celery limits for a step: the soft one (:func:`soft_limit_s`) ends it ``timed_out``;
    the hard one, ``timeout_s`` or :data:`MIN_LIMIT_GAP_S` after the soft one if that is
    later, kills a process that ignored it (then the reaper takes over)."""
    return {"time_limit": hard_limit_s(timeout_s), "soft_time_limit": soft_limit_s(timeout_s)}


def soft_limit_s(timeout_s: float) -> float:
    """A step's soft time limit: its ``timeout_s`` less a tenth, at most 30 s less."""
    return timeout_s - min(30.0, timeout_s * 0.1)


def hard_limit_s(timeout_s: float) -> float:
    """A step's hard time limit: ``timeout_s``, and at least :data:`MIN_LIMIT_GAP_S` after
    its soft limit (a 5 s step: soft 4.5 s, hard 7.5 s)."""
    return max(timeout_s, soft_limit_s(timeout_s) + MIN_LIMIT_GAP_S)


def revoke(run_id: str, task_ids: list[str]) -> None:
    """Stop a cancelled run's running step tasks: SIGUSR1 raises SoftTimeLimitExceeded
    inside the tool (a step that no longer holds its step then stops quietly)."""
    if not task_ids:
        return
    from nofx.worker import app

    try:
        app.control.revoke(task_ids, terminate=True, signal="SIGUSR1")
    except Exception:  # the steps are already cancelled in the database; revoking is a courtesy
        log.warning("could not revoke tasks %s; their heartbeats will stop them", task_ids,
                    exc_info=True, extra={"run_id": run_id})
