"""Builds the Celery app from ``celeryconfig`` and wires NOFX's logging and metrics into it."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

app = Celery("nofx", include=["nofx.worker.tasks"])
app.config_from_object("celeryconfig")


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    from nofx.logs import setup_logging

    setup_logging("worker")


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections inherited from the parent must not be shared with it.
    from nofx.db.engine import dispose_engines

    dispose_engines()


@signals.worker_init.connect
def _start_metrics(**_: Any) -> None:
    from nofx import observe

    observe.start_worker_metrics()


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, **_: Any) -> None:
    from nofx.logs import bind

    bind(task_id=task_id, run_id=None, step_id=None)


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    from nofx.logs import bind

    bind(task_id=None, run_id=None, step_id=None)
