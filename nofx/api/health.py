"""``/health`` (is this process serving?), ``/health/ready`` (can it serve requests: does its
database answer?) and ``/health/detailed`` (is everything else up?)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from nofx.api import schemas
from nofx.services import health

blp = Blueprint("health", __name__, url_prefix="/health", description="Health checks")


@blp.route("")
class Health(MethodView):
    @blp.doc(security=[])
    @blp.response(200, schemas.HealthSchema)
    def get(self) -> Any:
        """``{"status": "ok"}`` while this process serves (no dependency is asked)."""
        return {"status": "ok"}


@blp.route("/detailed")
class DetailedHealth(MethodView):
    @blp.response(200, schemas.DetailedHealthSchema)
    @blp.alt_response(503, schema=schemas.DetailedHealthSchema, description="something is down")
    def get(self) -> Any:
        """Database, broker, storage, workers and reaper, each with ok, latency and error."""
        checks = health.detailed()
        ok = all(check["ok"] for check in checks.values())
        return {"status": "ok" if ok else "degraded", "checks": checks}, (200 if ok else 503)


@blp.route("/ready")
class Ready(MethodView):
    @blp.doc(security=[])
    @blp.response(200, schemas.HealthSchema)
    @blp.alt_response(503, schema=schemas.HealthSchema, description="the database does not answer")
    def get(self) -> Any:
        """``ok`` while the database answers with the schema this code needs: a readiness
        probe's question. Workers, beat, the broker and storage are not asked: without them
        runs are still stored, read and queued, and their outages have alerts of their own.
        No token needed (probes send none), and no detail given (``/health/detailed`` has it)."""
        ok = health.ready()
        return {"status": "ok" if ok else "unavailable"}, (200 if ok else 503)
