"""``/metrics``: fleet figures from the database, plus this API's HTTP figures.

The fleet figures are read from the database at scrape time, so every replica agrees. The
HTTP figures are counted per request, by route template (``/runs/<run_id>``, never a raw
path). Under gunicorn they are summed over all the replica's worker processes (prometheus
multiprocess mode; the directory is set up in ``gunicorn_conf.on_starting``); a plain
single-process server counts in memory.
"""

from __future__ import annotations

import logging
import re
import time

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from nofx import observe
from nofx.services.fleet import FleetCollector

blp = Blueprint("metrics", __name__, url_prefix="/metrics", description="Prometheus metrics")
log = logging.getLogger("nofx.api.access")

HTTP_REQUESTS = Counter("nofx_http_requests", "HTTP requests, by method, route and status.",
                        ["method", "route", "status"], registry=None)
HTTP_DURATION = Histogram("nofx_http_request_duration_seconds", "HTTP request latency.",
                          ["method", "route"], registry=None,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
#: Scrapes and probes are logged at DEBUG: at INFO they would drown everything else.
QUIET_ROUTES = {"/metrics", "/health"}


@blp.route("")
class Metrics(MethodView):
    @blp.doc(security=[])
    @blp.response(200, description="Prometheus text format", content_type=CONTENT_TYPE_LATEST)
    def get(self) -> Response:
        """Prometheus text format: runs, steps, stuck steps, reaper, HTTP."""
        registry = current_app.extensions["nofx_metrics"]
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def build_registry() -> CollectorRegistry:
    """The fleet collector, plus HTTP figures summed over this API's processes (or in memory)."""
    registry = CollectorRegistry(auto_describe=True)
    path = observe.multiprocess_dir()
    if path:
        observe.MultiProcessCollector(registry, path=path)
    else:
        registry.register(HTTP_REQUESTS)
        registry.register(HTTP_DURATION)
    registry.register(FleetCollector())
    return registry


def init_app(app: Flask) -> None:
    """Count, time and log every request, labelled by route template (not raw path)."""
    app.extensions["nofx_metrics"] = build_registry()

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            _record(response, time.perf_counter() - started)
        return response


def route_template(rule: str) -> str:
    """``/runs/<string:run_id>`` -> ``/runs/<run_id>``: the label says where, not how."""
    return _CONVERTER.sub(r"<\1>", rule)


#: Methods counted by name; any other is counted as ``other``. A label takes whatever the
#: client sends, and gunicorn accepts any method name of 3 to 20 capitals: without a fixed
#: set, anyone (no token needed: a 401 is counted too) could add series without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _record(response: Response, seconds: float) -> None:
    route = route_template(request.url_rule.rule) if request.url_rule else "<unmatched>"
    method = request.method if request.method in METHODS else "other"
    HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)
    level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
    log.log(level, "%s %s %d", request.method, request.path, response.status_code, extra={
        "method": request.method, "route": route, "path": request.path,
        "status": response.status_code, "duration_ms": round(seconds * 1000, 1),
        "request_id": g.get("request_id"),
    })
