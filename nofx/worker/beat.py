"""Beat's scheduler: Celery's persistent scheduler, except that beat runs the reaper itself.

Sent as a task, a reaper tick waits in the steps' queue until a worker process is free, and
a worker whose processes all run long steps (LLM calls of several minutes, with prefetch 1)
takes no message until one ends. So the reaper would stall exactly when every worker is
busy, and with it the healing of steps that a dead worker left ``running``. Beat is the one
process that exists only to keep time, so each ``nofx.reap`` entry is run here, in a thread
of its own (beat's loop keeps its clock while a tick waits on the database), one tick at a
time. The ``nofx.reap`` task stays for running a tick by hand on a worker
(``celery -A nofx.worker call nofx.reap``); ``nofx reap`` runs one in the current shell.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry

log = logging.getLogger(__name__)

REAP_TASK = "nofx.reap"


class Scheduler(PersistentScheduler):
    """Runs ``nofx.reap`` entries in this process; sends every other entry as Celery does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._reaping: threading.Thread | None = None
        self._reaping_since = 0.0
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        # The schedule file lives in NOFX_DATA_DIR, which a beat on its own host (no
        # embedded broker, artifacts in S3) may be the first to use: make it, or the shelve
        # cannot be opened and beat exits.
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        if entry.task != REAP_TASK:
            return super().apply_entry(entry, producer=producer)
        if self._reaping is not None and self._reaping.is_alive():
            log.warning("the previous reaper tick is still running (for %.0fs); skipping "
                        "this one", time.monotonic() - self._reaping_since)
            return None
        self._reaping_since = time.monotonic()
        self._reaping = threading.Thread(target=reap_once, name="nofx-reaper", daemon=True)
        self._reaping.start()
        return None


def reap_once() -> None:
    """One reaper tick, logged with what it did (as a worker logged the task's result); a
    failed one is logged too, and the next tick tries again."""
    from nofx.services import reaper

    started = time.monotonic()
    try:
        done = reaper.reap()
    except Exception:
        log.exception("reaper tick failed; the next one tries again")
        return
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    log.info("reaper tick", extra={**done, "duration_ms": elapsed_ms, **_clock_skew()})


#: When beat last said its clock is off (``time.monotonic()``): at most every 10 minutes.
_skew_said_at: float | None = None
SKEW_SAY_EVERY_S = 600.0


def _clock_skew() -> dict[str, float]:
    """How far beat's clock is from the database server's (the reaper judges heartbeats
    with it), said as an error when past the tolerance (``nofx.db.clock``)."""
    global _skew_said_at
    from nofx.config import get_settings
    from nofx.db import clock
    from nofx.db.engine import get_engine

    try:
        with get_engine().connect() as conn:
            skew = clock.skew_s(conn)
    except Exception:  # the database's trouble shows in the ticks themselves
        return {}
    if skew is None:
        return {}
    problem = clock.skew_problem(skew, get_settings())
    now = time.monotonic()
    if problem and (_skew_said_at is None or now - _skew_said_at >= SKEW_SAY_EVERY_S):
        _skew_said_at = now
        log.error(problem, extra={"clock_skew_s": skew})
    return {"clock_skew_s": skew}
