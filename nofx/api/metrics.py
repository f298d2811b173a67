"""``/metrics``: fleet figures from the database, plus this process's HTTP figures."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from nofx.services.fleet import FleetCollector

blp = Blueprint("metrics", __name__, url_prefix="/metrics", description="Prometheus metrics")

registry = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter("nofx_http_requests", "HTTP requests, by method, route and status.",
                        ["method", "route", "status"], registry=registry)
HTTP_DURATION = Histogram("nofx_http_request_duration_seconds", "HTTP request latency.",
                          ["method", "route"], registry=registry,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
registry.register(FleetCollector())


@blp.route("")
class Metrics(MethodView):
    @blp.doc(security=[])
    @blp.response(200, description="Prometheus text format", content_type=CONTENT_TYPE_LATEST)
    def get(self) -> Response:
        """Prometheus text format: runs, steps, stuck steps, reaper, HTTP."""
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Time every request, labelled by route template (not raw path)."""

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule else "<unmatched>"
            HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
            HTTP_DURATION.labels(request.method, route).observe(time.perf_counter() - started)
        return response
