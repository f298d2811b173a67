"""``/dev/stuck-steps``: what the reaper would act on right now."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from nofx.api import schemas
from nofx.services import reaper

blp = Blueprint("dev", __name__, url_prefix="/dev", description="Operator views")


@blp.route("/stuck-steps")
class StuckSteps(MethodView):
    @blp.response(200, schemas.StuckStepPageSchema)
    def get(self) -> Any:
        """Running steps that are stuck now, with ``age_s`` (silence) and ``reason``."""
        return {"items": reaper.stuck_steps()}
