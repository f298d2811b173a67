"""NOFX's Celery tasks. Thin, like views: ids in, one service call, policy declared once.

Success is recorded inside the task body, not in ``on_success``: Celery sends a chain's
next link *before* it calls ``on_success`` (``celery/app/trace.py``), so a step recorded
there could be overtaken by the next step or the run's end. Failure has no such race (a
failed task never continues its chain), so :meth:`StepTask.on_failure` records it.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from nofx import observe
from nofx.config import get_settings
from nofx.db.engine import UNAVAILABLE
from nofx.domain import StepStatus
from nofx.errors import RetryableToolError, StepLost, ToolError
from nofx.logs import bind
from nofx.services import execute, reaper
from nofx.services.dispatch import soft_limit_s
from nofx.status import ClaimedStep
from nofx.worker.app import app

log = logging.getLogger(__name__)


class StepTask(Task):
    """Base class of the step task: one place for the retry policy and failure handling."""

    acks_late = True
    reject_on_worker_lost = True

    def backoff(self, attempt: int, exc: ToolError | None = None) -> float:
        """Exponential backoff with jitter, capped; at least what the failing service asked
        for (``Retry-After`` on a 429 or 529), within the same cap."""
        settings = get_settings()
        ceiling = min(settings.retry_backoff_max_s,
                      settings.retry_backoff_s * 2 ** min(max(attempt - 1, 0), 30))
        asked = getattr(exc, "retry_after_s", None) or 0.0
        return max(random.uniform(ceiling / 2, ceiling), min(asked, settings.retry_backoff_max_s))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        """Record the failed attempt: the step ends failed or timed out, and so does its run."""
        attempt = getattr(self.request, "nofx_attempt", None)
        run_id, step_id = args[0], args[1]
        if attempt is None or isinstance(exc, StepLost):
            return  # never claimed by this delivery, or no longer ours: nothing to record
        try:
            changed = execute.fail(run_id, step_id, attempt, exc)
        except Exception:  # the reaper will find the step; say so loudly
            log.exception("could not record step failure", extra=_ids(run_id, step_id))
            return
        if changed:
            log.error("step failed: %s", execute.error_of(exc)["message"],
                      extra=_ids(run_id, step_id, tool=kwargs.get("tool")))
            outcome = "timed_out" if isinstance(exc, SoftTimeLimitExceeded) else "failed"
            observe.step_finished(kwargs.get("tool", "?"), outcome, _elapsed(self.request))
        else:
            log.warning("step failure not recorded: this attempt no longer holds the step "
                        "(%s)", execute.error_of(exc)["message"],
                        extra=_ids(run_id, step_id, attempt=attempt))


@app.task(bind=True, base=StepTask, name="nofx.run_step")
def run_step(self: StepTask, run_id: str, step_id: str, **display: Any) -> None:
    """Run one step of a run. ``display`` (tool, step, index) is for Flower and logs only."""
    bind(run_id=run_id, step_id=step_id)
    self.request.nofx_entered = time.monotonic()  # the time limits run from here
    step = execute.claim(run_id, step_id, self.request.id)
    if step is None:
        return _not_claimed(run_id, step_id)
    self.request.nofx_attempt = step.attempt
    self.request.nofx_started = time.monotonic()
    log.info("step started", extra=_ids(run_id, step_id, tool=step.tool, attempt=step.attempt))
    try:
        _run_claimed(self, step)
    except UNAVAILABLE:
        # Whatever the attempt came to, it could not be recorded. Failing the step for that
        # would end the run over a database blip; the step stays running, its heartbeat
        # stops, and the reaper requeues it (or, out of attempts, fails it).
        log.exception("the database is unavailable: this attempt's outcome is not recorded; "
                      "the reaper will take the step back",
                      extra=_ids(run_id, step_id, attempt=step.attempt))
        raise Ignore() from None


def _run_claimed(self: StepTask, step: ClaimedStep) -> None:
    run_id, step_id = step.run_id, step.id
    try:
        execute.run_claimed(step)
    except StepLost:
        # The tool finished, but the run was cancelled or the step reaped meanwhile (a
        # revoke or heartbeat too late to interrupt it): its result is not recorded.
        log.info("step finished but this attempt no longer holds it; result dropped",
                 extra=_ids(run_id, step_id, attempt=step.attempt))
        raise Ignore() from None
    except SoftTimeLimitExceeded as exc:
        if not execute.still_holds(step):
            # Interrupted on purpose: the run was cancelled or the step reaped meanwhile.
            log.info("step interrupted: this attempt no longer holds it",
                     extra=_ids(run_id, step_id, attempt=step.attempt))
            raise Ignore() from None
        if _ran_s(self.request) < soft_limit_s(step.timeout_s) - 1.0:
            # Not this step's time limit: a cancel's revoke signals a *process*, which may
            # have moved on from the cancelled step to this one (Celery's docs warn of
            # terminate for this reason). The step did nothing wrong: run it again.
            stray = RetryableToolError("interrupted by a signal meant for another task")
            _retry(self, step, stray, delay=0.0)
            raise stray from exc  # no attempt left: fail, saying what happened
        raise
    except ToolError as exc:
        if exc.retryable:
            _retry(self, step, exc, delay=self.backoff(execute.attempt_in_budget(step), exc))
        raise
    observe.step_finished(step.tool, "succeeded", _elapsed(self.request))
    log.info("step succeeded", extra=_ids(run_id, step_id, tool=step.tool, attempt=step.attempt))


def _retry(self: StepTask, step: ClaimedStep, exc: ToolError, delay: float) -> None:
    """Queue the step again after ``delay`` (raises Celery's ``Retry``), if it has attempts
    left and still holds its step; otherwise return, and the caller re-raises."""
    if step.attempt < step.max_attempts and execute.retry_later(step, exc, delay):
        observe.step_finished(step.tool, "retrying", _elapsed(self.request))
        log.warning("step will retry in %.1fs: %s", delay, exc.message,
                    extra=_ids(step.run_id, step.id, attempt=step.attempt))
        raise self.retry(countdown=delay, exc=exc, max_retries=None) from exc


def _not_claimed(run_id: str, step_id: str) -> None:
    """A delivery that may not run its step: continue the chain only past a finished step."""
    current = execute.step_status(step_id)
    if current == StepStatus.SUCCEEDED:
        log.info("step already succeeded; passing the chain on", extra=_ids(run_id, step_id))
        return
    log.info("step not claimable (%s); this delivery stops here", current,
             extra=_ids(run_id, step_id))
    raise Ignore()


@app.task(name="nofx.finish_run", acks_late=True)
def finish_run(run_id: str) -> None:
    """End a run ``succeeded`` if all its steps have (a guarded no-op otherwise).

    Runs end with their last step's success now; chains sent by earlier builds ended with
    this link, so it stays registered for messages still in a broker, and for
    operators (`celery -A nofx.worker call nofx.finish_run --args='["RUN_ID"]'`).
    """
    bind(run_id=run_id)
    if execute.finish_run(run_id):
        log.info("run succeeded", extra={"run_id": run_id})


@app.task(name="nofx.reap", acks_late=True, ignore_result=True)
def reap() -> dict[str, int]:
    """Find stuck steps and stalled runs and heal them: one reaper tick, by hand.

    Beat runs the same ticks itself, in its own process (``nofx/worker/beat.py``), so busy
    workers cannot delay them; this task is for ``celery -A nofx.worker call nofx.reap``.
    """
    return reaper.reap()


def _ids(run_id: str, step_id: str, **more: Any) -> dict[str, Any]:
    return {"run_id": run_id, "step_id": step_id, **more}


def _ran_s(request: Any) -> float:
    """How long the task has run, from its entry (as its time limits count), claim included."""
    return time.monotonic() - getattr(request, "nofx_entered", time.monotonic())


def _elapsed(request: Any) -> float:
    started = getattr(request, "nofx_started", None)
    return time.monotonic() - started if started else 0.0
