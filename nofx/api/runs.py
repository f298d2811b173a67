"""``/runs``: submit a plan, list and read runs, their events and artifacts; cancel, retry."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from nofx.api import schemas
from nofx.services import runs as service

blp = Blueprint("runs", __name__, url_prefix="/runs", description="Runs of plans")


@blp.route("")
class Runs(MethodView):
    @blp.arguments(schemas.RunCreateSchema, example=schemas.SEED_PLAN)
    @blp.response(201, schemas.RunSchema)
    @blp.alt_response(200, schema=schemas.RunSchema, description="an idempotent replay")
    @blp.alt_response(409, description="Idempotency-Key reused with another body")
    @blp.alt_response(415, description="the body is not JSON")
    def post(self, body: dict[str, Any]) -> Any:
        """Submit a plan; its steps run in order, one Celery task each."""
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and not 1 <= len(key) <= 200:
            abort(422, message="Idempotency-Key must be 1 to 200 characters")
        run, created = service.submit_run(body["plan"], idempotency_key=key)
        return run, (201 if created else 200)

    @blp.arguments(schemas.RunListArgsSchema, location="query")
    @blp.response(200, schemas.RunPageSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """List runs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        items, after = service.list_runs(args.get("status"), args["limit"],
                                         _decode_cursor(args.get("cursor")))
        return {"items": items, "next_cursor": _encode_cursor(after)}


@blp.route("/<string:run_id>")
class RunById(MethodView):
    @blp.response(200, schemas.RunSchema)
    def get(self, run_id: str) -> Any:
        """A run with its steps (in plan order) and artifacts."""
        return service.get_run(run_id)


@blp.route("/<string:run_id>/events")
class RunEvents(MethodView):
    @blp.arguments(schemas.EventArgsSchema, location="query")
    @blp.response(200, schemas.EventPageSchema)
    def get(self, args: dict[str, Any], run_id: str) -> Any:
        """A run's events in id order, after the event id ``after``."""
        return {"items": service.list_events(run_id, args["after"], args["limit"])}


@blp.route("/<string:run_id>/artifacts")
class RunArtifacts(MethodView):
    @blp.response(200, schemas.ArtifactPageSchema)
    def get(self, run_id: str) -> Any:
        """A run's artifacts."""
        return {"items": service.list_artifacts(run_id)}


@blp.route("/<string:run_id>/cancel")
class RunCancel(MethodView):
    @blp.response(200, schemas.RunSchema)
    @blp.alt_response(409, description="the run has already finished")
    def post(self, run_id: str) -> Any:
        """Cancel a queued or running run: its queued and running steps end cancelled."""
        return service.cancel_run(run_id)


@blp.route("/<string:run_id>/retry")
class RunRetry(MethodView):
    @blp.response(200, schemas.RunSchema)
    @blp.alt_response(409, description="the run is not failed or cancelled")
    def post(self, run_id: str) -> Any:
        """Resume a failed or cancelled run from its first unsuccessful step."""
        return service.resume_run(run_id)


def _encode_cursor(after: tuple[datetime, str] | None) -> str | None:
    if after is None:
        return None
    raw = f"{after[0].isoformat()}|{after[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, run_id = raw.split("|", 1)
        parsed = datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("cursor time has no zone")
        return parsed, run_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        abort(422, message="invalid cursor", errors={"query": {"cursor": ["not a cursor from this API"]}})
    return None
