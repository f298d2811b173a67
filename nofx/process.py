"""Housekeeping for NOFX's long-lived processes (API workers, Celery workers and their pools)."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects(role: str) -> int:
    """Put every object alive now out of the garbage collector's reach (``gc.freeze``).

    A process that has loaded NOFX holds ~110k long-lived objects (modules, classes, the
    Flask or Celery app, SQLAlchemy's tables and caches), and every full (generation 2)
    collection walks them all: ~40 ms on an idle process on the benchmark machine, ~110 ms
    measured under load in an API worker, while every thread of the process waits (in the
    API benchmark: clusters of requests at 73–93 ms; docs/benchmarks.md). Frozen, they are
    never scanned again; what the process allocates afterwards is collected as usual.

    Garbage is collected first, so none of it is kept for good. That collection walks only
    objects not frozen yet: in a process forked after its parent froze (a Celery pool
    process) it does not touch the inherited ones, whose pages stay shared with the parent.
    Call it once the process has loaded what it keeps; ``role`` (api, worker, worker-pool)
    names the process in the log line.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("startup objects frozen", extra={"role": role, "objects": frozen})
    return frozen
