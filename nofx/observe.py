"""What a worker measures about its own work, served on NOFX_WORKER_METRICS_PORT.

Prefork children (and gunicorn workers) are separate processes, so NOFX uses
prometheus-client's multiprocess mode: each process writes its figures to files in a
directory, and one process serves their sum. Every worker, and every API (gunicorn master),
gets a fresh directory of its own under ``PROMETHEUS_MULTIPROC_DIR`` (a temp dir if unset),
so processes that share one environment never mix their figures. A failing metric is
logged, never fatal to a step.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram, multiprocess

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

STEP_DURATION = Histogram(
    "nofx_step_duration_seconds", "Time a step attempt spent running, by tool and outcome.",
    ["tool", "status"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
LLM_TOKENS = Counter(
    "nofx_llm_tokens", "LLM tokens used, by provider, model and kind (input/output).",
    ["provider", "model", "kind"],
)
LLM_COST = Counter("nofx_llm_cost_usd", "LLM cost in US dollars.", ["provider", "model"])


def step_finished(tool: str, status: str, seconds: float) -> None:
    """Observe one finished step attempt."""
    _safely(lambda: STEP_DURATION.labels(tool, status).observe(seconds))


def llm_usage(completion: Any, cost: float) -> None:
    """Count one LLM call's tokens and cost."""
    def _count() -> None:
        LLM_TOKENS.labels(completion.provider, completion.model, "input").inc(completion.input_tokens)
        LLM_TOKENS.labels(completion.provider, completion.model, "output").inc(completion.output_tokens)
        LLM_COST.labels(completion.provider, completion.model).inc(cost)
    _safely(_count)


def _safely(fn: Any) -> None:
    try:
        fn()
    except Exception:
        log.warning("could not record a metric", exc_info=True)


# -- where the figures of a process tree live ---------------------------------------------


def use_own_metrics_dir(name: str) -> Path:
    """Send this process's figures, and its future children's, to a fresh directory of its own.

    Call it in the parent before it forks (celery ``worker_init``, gunicorn ``on_starting``).
    The directory is ``<PROMETHEUS_MULTIPROC_DIR or temp>/<name>``, emptied first: figures
    left by a previous process of that name must not be added to this one's.
    """
    base = _base_dir()
    _forget_dead_processes(base)
    path = base / re.sub(r"[^A-Za-z0-9_.@-]", "_", name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    _store_values_in_files()
    return path


def multiprocess_dir() -> str | None:
    """The directory this process writes its figures to, or ``None`` (figures in memory)."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV)
    multiprocess = getattr(values.ValueClass, "_multiprocess", False)
    return path if multiprocess and path and os.path.isdir(path) else None


def remove_metrics_dir(path: Path) -> None:
    """Forget a process tree's figures once it has stopped."""
    shutil.rmtree(path, ignore_errors=True)


def prepare_multiprocess_dir() -> str:
    """Empty (or make) PROMETHEUS_MULTIPROC_DIR; ``nofx dev`` calls it before starting children."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="nofx-metrics-")
        os.environ[MULTIPROC_ENV] = path
    else:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    return path


def _forget_dead_processes(base: Path) -> None:
    """Remove the ``api-<pid>`` directories of API masters that died without cleaning up.

    (A worker's directory is named after its node name, and emptied when it starts again.)
    """
    for path in base.glob("api-*"):
        pid = path.name.removeprefix("api-")
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _base_dir() -> Path:
    return Path(os.environ.get(MULTIPROC_ENV) or Path(tempfile.gettempdir()) / "nofx-metrics")


def _store_values_in_files() -> None:
    # prometheus-client picks in-memory or file-backed values when it is first imported,
    # from the environment. `celery -A nofx.worker worker` may import it (through the task
    # modules) before NOFX gets a say, so switch explicitly; metrics created from now on,
    # here and in forked children, write to PROMETHEUS_MULTIPROC_DIR.
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


# -- reading the pool's files --------------------------------------------------------------


class MultiProcessCollector(multiprocess.MultiProcessCollector):
    """prometheus-client's collector, skipping files that are still empty.

    A process creates its file before sizing it, so a scrape can find it at 0 bytes, and
    prometheus-client 0.26 then fails the whole scrape (prometheus/client_python#1199; a
    worker killed in that window leaves the empty file for good). An empty file holds no
    figures yet, so leaving it out loses nothing.
    """

    def collect(self) -> Any:
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _has_data(f)]
        return self.merge(files, accumulate=True)


def _has_data(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:  # removed meanwhile (a process's files are cleaned when it exits)
        return False


# -- the worker's endpoint -----------------------------------------------------------------


def serve_worker_metrics(nodename: str) -> Path:
    """Serve the sum of all this worker's pool processes on NOFX_WORKER_METRICS_PORT (0: off).

    Returns the worker's metrics directory. It is made even when nothing serves it, so a
    worker never writes into a directory another process reads.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    from nofx.config import get_settings

    path = use_own_metrics_dir(f"worker-{nodename}")
    port = get_settings().worker_metrics_port
    if not port:
        return path
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    try:
        start_http_server(port, registry=registry)
        log.info("worker metrics on :%d/metrics", port, extra={"metrics_dir": str(path)})
    except OSError as exc:
        log.warning("worker metrics not served on :%d: %s (another worker on this host? give "
                    "each its own NOFX_WORKER_METRICS_PORT)", port, exc)
    return path
