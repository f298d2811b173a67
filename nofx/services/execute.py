"""Running one step: claim it, run its tool under a heartbeat, store its artifacts, finish it.

Called by the step task (``nofx/worker/tasks.py``), which owns the retry policy. Every
status change goes through :mod:`nofx.status`; this module decides which one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from nofx import adapters, status
from nofx.config import get_settings
from nofx.db.engine import UNAVAILABLE, transaction
from nofx.db.models import steps
from nofx.domain import StepStatus
from nofx.errors import PermanentToolError, StepLost, ToolError
from nofx.llm.base import Completion, cost_usd
from nofx.logs import redact
from nofx.storage.base import artifact_key
from nofx.tools import Artifact, ToolContext, get_tool

log = logging.getLogger(__name__)


def claim(run_id: str, step_id: str, task_id: str) -> status.ClaimedStep | None:
    """Take the step for one attempt, or ``None`` when it is not ours to run."""
    with status.step_connection() as conn:
        return status.claim_step(conn, run_id, step_id, task_id)


def step_status(step_id: str) -> StepStatus | None:
    """The step's current status (to tell a finished duplicate from a busy one)."""
    with transaction() as conn:
        value = conn.execute(select(steps.c.status).where(steps.c.id == step_id)).scalar()
    return StepStatus(value) if value else None


def attempt_in_budget(step: status.ClaimedStep) -> int:
    """Which attempt of its current budget this is (1, 2, ...): attempts number on across a
    resume (``nofx/status.py``), and a retry's backoff starts again with the budget."""
    with transaction() as conn:
        budget = conn.execute(
            select(steps.c.attempt_budget).where(steps.c.id == step.id)
        ).scalar()
    return step.attempt - (step.max_attempts - (budget or step.max_attempts))


def still_holds(step: status.ClaimedStep) -> bool:
    """Whether this attempt still holds its step (not cancelled, reaped or finished)."""
    return _attempt_left_it(step, StepStatus.RUNNING)


def succeeded_by(step: status.ClaimedStep) -> bool:
    """Whether this very attempt is the one that ended the step ``succeeded``."""
    return _attempt_left_it(step, StepStatus.SUCCEEDED)


def _attempt_left_it(step: status.ClaimedStep, wanted: StepStatus) -> bool:
    """Whether the step is ``wanted`` as of this attempt (and no later one)."""
    with transaction() as conn:
        row = conn.execute(
            select(steps.c.status, steps.c.attempt).where(steps.c.id == step.id)
        ).first()
    return row is not None and (row.status, row.attempt) == (wanted, step.attempt)


def run_claimed(step: status.ClaimedStep) -> dict[str, Any]:
    """Run the claimed step's tool and record its success; returns its outputs."""
    settings = get_settings()
    tool = get_tool(step.tool)
    if tool is None:
        raise PermanentToolError(f"no tool named {step.tool!r} is installed on this worker")
    inputs = tool.validate(step.inputs)
    ctx = ToolContext(
        run_id=step.run_id, step_id=step.id, attempt=step.attempt,
        llm_client=adapters.llm(), default_model=settings.llm_model,
        default_max_tokens=settings.llm_max_tokens,
        on_usage=lambda completion: record_usage(step, completion),
        on_progress=Progress(step, settings.progress_every_s),
    )
    with HEARTBEATS.holding(step):
        result = tool.run(inputs, ctx)
        stored = [store_artifact(step, artifact) for artifact in result.artifacts]
    if not record_success(step, result.outputs, stored):
        raise StepLost(f"step {step.id} attempt {step.attempt} was cancelled or reaped meanwhile")
    return result.outputs


def record_success(step: status.ClaimedStep, outputs: dict[str, Any],
                   stored: list[status.NewArtifact]) -> bool:
    """Record the step's success; ``False`` if this attempt no longer holds the step.

    A database that fails the write (a restart, a failover: the held connection is gone)
    gets one more try on a fresh connection, so the tool's work is not thrown away for a
    blip. If the first try had committed before its answer was lost, the second finds the
    step already succeeded by this attempt, and that is a success too. A second failure
    propagates: the task leaves the step to the reaper (``nofx/worker/tasks.py``).
    """
    try:
        with status.step_connection() as conn:
            return status.succeed_step(conn, step.run_id, step.id, step.attempt, outputs, stored)
    except UNAVAILABLE:
        log.warning("could not record the step's success; trying once more", exc_info=True,
                    extra={"run_id": step.run_id, "step_id": step.id, "attempt": step.attempt})
    with status.step_connection() as conn:
        if status.succeed_step(conn, step.run_id, step.id, step.attempt, outputs, stored):
            return True
    return succeeded_by(step)


def record_usage(step: status.ClaimedStep, completion: Completion) -> None:
    """Record ``llm.usage`` for the step the moment the model has answered."""
    prices = get_settings().llm_prices
    cost = cost_usd(prices, completion.model, completion.input_tokens, completion.output_tokens)
    payload = {
        "provider": completion.provider,
        "model": completion.model,
        "input_tokens": completion.input_tokens,
        "output_tokens": completion.output_tokens,
        "cost_usd": cost if cost is not None else 0.0,
        "priced": cost is not None,
        "attempt": step.attempt,
    }
    from nofx import observe

    observe.llm_usage(completion, cost or 0.0)
    try:
        with transaction() as conn:
            status.record_for_attempt(conn, step.run_id, step.id, step.attempt, "llm.usage",
                                      payload)
    except UNAVAILABLE:
        # The model has answered (and been paid): keep its answer rather than fail the step
        # over the record of its cost, which this line and the metrics still carry.
        log.exception("could not record llm.usage: the database is unavailable",
                      extra={"run_id": step.run_id, "step_id": step.id, "usage": payload})


class Progress:
    """Keeps a long step's progress as ``step.progress`` events: at most one every
    ``every_s`` seconds (``NOFX_PROGRESS_EVERY_S``; 0 keeps none), so a step shorter than
    that records none. Called from the tool's thread as its work advances (for ``codegen``,
    as the model's answer streams in); a write that fails is logged and the work goes on.
    """

    def __init__(self, step: status.ClaimedStep, every_s: float) -> None:
        self.step, self.every_s = step, every_s
        self.started = self.last = time.monotonic()

    def __call__(self, progress: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.every_s <= 0 or now - self.last < self.every_s:
            return
        self.last = now
        step = self.step
        payload = {"attempt": step.attempt, "elapsed_s": round(now - self.started, 1), **progress}
        try:
            with transaction() as conn:
                status.record_for_attempt(conn, step.run_id, step.id, step.attempt,
                                          "step.progress", payload)
        except SQLAlchemyError:  # not SoftTimeLimitExceeded: a time limit still interrupts
            log.warning("could not record step progress", exc_info=True,
                        extra={"run_id": step.run_id, "step_id": step.id, **payload})


def store_artifact(step: status.ClaimedStep, artifact: Artifact) -> status.NewArtifact:
    """Put the bytes in the artifact store; the row is written with the step's success."""
    key = artifact_key(step.run_id, step.id, step.attempt, artifact.name)
    stored = adapters.storage().put(key, artifact.data, artifact.content_type)
    return status.NewArtifact(
        name=artifact.name, content_type=artifact.content_type, size=stored.size,
        sha256=stored.sha256, storage_key=stored.key,
    )


def error_of(exc: BaseException, timeout_s: float | None = None) -> dict[str, str]:
    """The ``{"type", "message"}`` a failed step records (secrets masked: it is stored)."""
    if isinstance(exc, ToolError):
        error = exc.as_dict()
    elif isinstance(exc, SoftTimeLimitExceeded):
        limit = f" of {timeout_s:g}s" if timeout_s else ""
        error = {"type": "TimeLimitExceeded", "message": f"the step ran past its time limit{limit}"}
    else:
        error = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}
    return {**error, "message": redact(error["message"])}


def fail(run_id: str, step_id: str, attempt: int, exc: BaseException) -> bool:
    """End the attempt ``failed`` (``timed_out`` on a time limit); the run fails with it."""
    timed_out = isinstance(exc, SoftTimeLimitExceeded)
    with transaction() as conn:
        timeout_s = conn.execute(select(steps.c.timeout_s).where(steps.c.id == step_id)).scalar()
        return status.fail_step(
            conn, run_id, step_id, attempt, error_of(exc, timeout_s),
            status=StepStatus.TIMED_OUT if timed_out else StepStatus.FAILED,
        )


def retry_later(step: status.ClaimedStep, exc: ToolError, delay_s: float) -> bool:
    """Queue the step again after ``delay_s``, recording ``step.retrying``."""
    payload = {"attempt": step.attempt, "delay_s": round(delay_s, 3), "error": error_of(exc)}
    with transaction() as conn:
        return status.requeue_step(
            conn, step.run_id, step.id, step.attempt, ("step.retrying", payload), delay_s=delay_s
        )


def finish_run(run_id: str) -> bool:
    """End the run ``succeeded`` if every step has."""
    with transaction() as conn:
        return status.finish_run(conn, run_id)


class Heartbeats:
    """One thread per process refreshes the heartbeat of every step the process is running.

    A step is held only while its tool works; it is let go before its success is recorded.
    When an attempt no longer holds its step (cancelled, or reaped after a long stall) and
    is still held here, the tool is interrupted: inside a prefork child, SIGUSR1 raises
    SoftTimeLimitExceeded in it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, status.ClaimedStep] = {}
        self._pid = 0

    @contextmanager
    def holding(self, step: status.ClaimedStep) -> Iterator[None]:
        """Keep ``step`` beating for the duration of the block."""
        with self._lock:
            self._held[step.id] = step
            if self._pid != os.getpid():  # first use in this process (threads do not fork)
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="nofx-heartbeat", daemon=True).start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(step.id, None)

    def _loop(self) -> None:
        while True:
            time.sleep(max(get_settings().heartbeat_s, 0.05))
            with self._lock:
                held = list(self._held.values())
            for step in held:
                self._beat(step)

    def _beat(self, step: status.ClaimedStep) -> None:
        ids = {"run_id": step.run_id, "step_id": step.id}
        try:
            with transaction() as conn:
                if status.beat(conn, step.id, step.attempt):
                    return
        except Exception:  # a missed beat is survivable; the next one may get through
            log.warning("heartbeat failed", exc_info=True, extra=ids)
            return
        with self._lock:
            still_running_here = self._held.pop(step.id, None) is step
        if still_running_here:
            log.warning("step no longer held by this attempt; interrupting the tool", extra=ids)
            _interrupt()


HEARTBEATS = Heartbeats()


def _interrupt() -> None:
    from billiard.pool import soft_timeout_sighandler

    if signal.getsignal(signal.SIGUSR1) is soft_timeout_sighandler:
        os.kill(os.getpid(), signal.SIGUSR1)
