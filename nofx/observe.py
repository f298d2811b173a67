"""What a worker measures about its own work, served on NOFX_WORKER_METRICS_PORT.

Prefork children are separate processes, so counters use prometheus-client's multiprocess
mode: each child writes to files in ``PROMETHEUS_MULTIPROC_DIR``, and the worker's main
process serves their sum. A failing metric is logged, never fatal to a step.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

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


def prepare_multiprocess_dir() -> str:
    """Point prometheus-client at a fresh per-worker directory; call before any fork."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="nofx-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    else:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    return path


def start_worker_metrics() -> None:
    """Serve the sum of all pool processes' metrics on NOFX_WORKER_METRICS_PORT (0: off)."""
    from nofx.config import get_settings

    port = get_settings().worker_metrics_port
    if not port or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        if port:
            log.warning("worker metrics off: PROMETHEUS_MULTIPROC_DIR must be set before "
                        "the worker starts (`nofx worker` does it)")
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    try:
        start_http_server(port, registry=registry)
        log.info("worker metrics on :%d/metrics", port)
    except OSError as exc:
        log.warning("worker metrics not served on :%d: %s", port, exc)
