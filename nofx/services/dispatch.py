"""Sending runs to the workers: one Celery chain per run, one task per step, then its end.

Celery carries ids, never state. The chain starts at the run's first step that has not
succeeded, read from the database, so the same call serves a new run, a resumed run and
the reaper's redispatch of a stalled one.
"""

from __future__ import annotations

import logging

from celery import chain
from sqlalchemy import select

from nofx import status
from nofx.status import POSITION
from nofx.db.engine import transaction
from nofx.db.models import steps
from nofx.domain import StepStatus

log = logging.getLogger(__name__)

#: Fail fast when the broker is down: the run is safe in the database and the reaper
#: sends it later, so the API must not hang on a dead broker.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def dispatch_run(run_id: str) -> bool:
    """Send the run's chain from its first unsucceeded step; ``False`` if the broker refused."""
    from nofx.worker.tasks import finish_run, run_step

    with transaction() as conn:
        rows = conn.execute(
            select(steps.c.id, POSITION, steps.c.name, steps.c.tool, steps.c.status,
                   steps.c.timeout_s)
            .where(steps.c.run_id == run_id)
            .order_by(steps.c.index)
        ).all()
    first = next((i for i, r in enumerate(rows) if r.status != StepStatus.SUCCEEDED), len(rows))
    signatures = [
        run_step.si(run_id, r.id, tool=r.tool, step=r.name, index=r.position).set(
            **time_limits(r.timeout_s)
        )
        for r in rows[first:]
    ]
    try:
        chain(*signatures, finish_run.si(run_id)).apply_async(
            retry=True, retry_policy=PUBLISH_RETRY
        )
    except Exception:  # any broker failure: the run waits in the database for the reaper
        log.warning("could not dispatch run; the reaper will send it", exc_info=True,
                    extra={"run_id": run_id})
        return False
    with transaction() as conn:
        status.mark_dispatched(conn, run_id)
    return True


def time_limits(timeout_s: float) -> dict[str, float]:
    """Celery limits for a step: the hard limit is ``timeout_s``; the soft one comes first.

    The soft limit leaves the step time to record ``timed_out`` before the hard limit kills
    the process (then the reaper takes over).
    """
    return {"time_limit": timeout_s, "soft_time_limit": timeout_s - min(30.0, timeout_s * 0.1)}


def revoke(task_ids: list[str]) -> None:
    """Stop running step tasks: SIGUSR1 raises SoftTimeLimitExceeded inside the tool."""
    if not task_ids:
        return
    from nofx.worker import app

    try:
        app.control.revoke(task_ids, terminate=True, signal="SIGUSR1")
    except Exception:  # the steps are already cancelled in the database; revoking is a courtesy
        log.warning("could not revoke tasks %s", task_ids, exc_info=True)
