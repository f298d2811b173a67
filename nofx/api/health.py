"""``/health`` (is this process serving?) and ``/health/detailed`` (is everything else?)."""

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
