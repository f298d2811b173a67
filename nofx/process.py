"""Housekeeping for NOFX's long-lived processes (API workers, Celery workers and their pools)."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects(role: str) -> int:
    """Put every object alive now out of the garbage collector's reach (``gc.freeze``).

    A process that has loaded NOFX holds ~100k long-lived objects (modules, classes, the
    Flask or Celery app, SQLAlchemy's tables and caches), and every full (generation 2)
    collection walks them all: ~40 ms on the benchmark machine, during which every thread
    of the process waits. In the API that showed as clusters of requests 40–70 ms slower
    than the rest (docs/benchmarks.md). Frozen, they are never scanned again; what the
    process allocates afterwards is collected as usual. Freezing splices lists (it touches
    no object), so it costs nothing and, in a forked child, keeps the pages it shares with
    its parent shared. Call it once the process has loaded what it keeps; ``role`` (api,
    worker, worker-pool) says which process in the log line.
    """
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("startup objects frozen", extra={"role": role, "objects": frozen})
    return frozen
