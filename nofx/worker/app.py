"""Builds the Celery app from ``celeryconfig`` and wires NOFX's logging and metrics into it.

With JSON logs (the default) every line a worker or beat writes is one JSON object: their
text banners are replaced by a ``worker starting`` log line and beat's own log lines.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.apps.beat import Beat as CeleryBeat
from kombu.utils.url import maybe_sanitize_url

log = logging.getLogger("nofx.worker")

app = Celery("nofx", include=["nofx.worker.tasks"])
app.config_from_object("celeryconfig")


class Beat(CeleryBeat):
    """``celery -A nofx.worker beat``, logging as component ``beat``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from nofx.logs import json_logs

        super().__init__(*args, **kwargs)
        # The banner is text; with JSON logs beat's own `beat: Starting...` line says it.
        self.quiet: bool = bool(kwargs.get("quiet")) or json_logs()

    def setup_logging(self, colorize: bool | None = None) -> None:
        from nofx.logs import setup_logging

        super().setup_logging(colorize)
        setup_logging("beat")


app.Beat = app.subclass_with_self(Beat)  # type: ignore[method-assign]
_metrics_dir: list[Path] = []


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    from nofx.logs import setup_logging

    setup_logging("worker")


@signals.celeryd_init.connect
def _early_logging(instance: Any = None, **_: Any) -> None:
    # Before celery's start-up checks, whose warnings would otherwise be bare text.
    from nofx.logs import json_logs, setup_logging

    setup_logging("worker")
    if instance is not None and json_logs():
        instance.quiet = True  # the banner is text; its facts go in one JSON line instead


@signals.celeryd_after_setup.connect
def _log_start(sender: str, instance: Any = None, **_: Any) -> None:
    pool = getattr(getattr(instance, "pool_cls", None), "__module__", "")
    log.info("worker starting", extra={
        "worker": sender,
        "queues": sorted(app.amqp.queues.consume_from),
        "concurrency": getattr(instance, "concurrency", None),
        "pool": pool.rsplit(".", 1)[-1],
        "broker": maybe_sanitize_url(app.conf.broker_url),
    })


@signals.worker_ready.connect
def _check_database(**_: Any) -> None:
    """Say loudly when the database is behind (every claim would fail until it is upgraded),
    and when this host's clock is off the database server's (``nofx.db.clock``).

    The main process uses the database for nothing else (its pool processes run the steps),
    so the connection is closed afterwards rather than left idle for the worker's lifetime.
    """
    from nofx.config import get_settings
    from nofx.db import clock
    from nofx.db.engine import dispose_engines, get_engine
    from nofx.db.migrate import revision, schema_problem

    try:
        with get_engine().connect() as conn:
            found = revision(conn)
            skew = clock.skew_s(conn)
    except Exception:  # the database is down: the steps' own errors will say so
        log.warning("could not check the database schema", exc_info=True)
        return
    finally:
        dispose_engines()
    problem = schema_problem(found)
    if problem:
        log.error("%s; steps cannot run until then", problem)
    else:
        log.info("database schema is current", extra={"schema": found})
    late = clock.skew_problem(skew, get_settings())
    if late:
        log.error(late, extra={"clock_skew_s": skew})
    elif skew is not None:
        log.info("clock in step with the database server's", extra={"clock_skew_s": skew})


@signals.worker_init.connect
def _freeze(**_: Any) -> None:
    # Tasks imported, pool not forked yet: the pool processes inherit the frozen objects and
    # their pages stay shared (nofx/process.py). Not again before each later fork: objects
    # in flight then, frozen, would never be collected once they became garbage.
    from nofx.process import freeze_startup_objects

    freeze_startup_objects("worker")


@signals.worker_init.connect
def _start_metrics(sender: Any = None, **_: Any) -> None:
    # In the main process, before the pool forks: children inherit the metrics directory.
    from nofx import observe

    _metrics_dir.append(observe.serve_worker_metrics(getattr(sender, "hostname", None) or "worker"))


@signals.worker_shutdown.connect
def _drop_metrics(**_: Any) -> None:
    from nofx import observe

    for path in _metrics_dir:
        observe.remove_metrics_dir(path)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections inherited from the parent must not be used, nor closed, here; and what
    # the pool process holds now stays out of its full garbage collections.
    from nofx.db.engine import dispose_engines
    from nofx.process import freeze_startup_objects

    dispose_engines(close=False)
    freeze_startup_objects("worker-pool")
    # `kill -USR2 PID` makes a pool process write every thread's stack to the worker's
    # stderr, and go on: where a step is stuck, without a debugger. (SIGUSR1 is the soft
    # time limit's, in pool processes.)
    faulthandler.register(signal.SIGUSR2, file=2, all_threads=True, chain=False)  # fd 2: stderr


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    from nofx.logs import bind

    bind(task_id=task_id, task=getattr(task, "name", None), run_id=None, step_id=None)


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    from nofx.logs import bind

    bind(task_id=None, task=None, run_id=None, step_id=None)
