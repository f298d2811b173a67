"""``/runs``: submit a plan, list and read runs, their events and artifacts; cancel, retry."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flask import Response, g, url_for
from flask.blueprints import BlueprintSetupState
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from flask_smorest.error_handler import ErrorSchema
from marshmallow import RAISE

from nofx.api import schemas, stream
from nofx.api.requests import JsonBodyParser, check_body
from nofx.config import get_settings
from nofx.services import runs as service

blp = Blueprint("runs", __name__, url_prefix="/runs", description="Runs of plans")
blp.ARGUMENTS_PARSER = JsonBodyParser()
blp.before_request(check_body)


@blp.record_once
def _document_tool_steps(state: BlueprintSetupState) -> None:
    # Runs before this blueprint's views are documented, so the plan's steps come out as
    # one schema per registered tool.
    api = state.app.extensions["flask-smorest"]["blp_name_to_api"][blp.name]
    api.ma_plugin.converter.add_attribute_function(schemas.steps_one_of_tools)


RUN_NOT_FOUND = schemas.error_doc(404, "run 3f0f6bd4-4a55-4c38-9b1c-1b6f7f1f2a10 not found",
                                  "no run has this id")


@blp.route("")
class Runs(MethodView):
    @blp.arguments(schemas.RunCreateSchema, example=schemas.SEED_PLAN)
    @blp.arguments(schemas.IdempotencyHeadersSchema, location="headers", as_kwargs=True)
    @blp.response(201, schemas.RunSchema, description="the run, queued",
                  example=schemas.EXAMPLE_QUEUED_RUN, headers={"Location": {
                      "description": "the run's address, `/runs/{id}`",
                      "schema": {"type": "string"}}})
    @blp.alt_response(200, schema=schemas.RunSchema, success=True,
                      description="an idempotent replay: the run first made with this key")
    @blp.alt_response(409, **schemas.error_doc(
        409, "this Idempotency-Key was already used with a different request body"))
    @blp.alt_response(413, **schemas.error_doc(
        413, "the body is larger than 1048576 bytes (NOFX_MAX_BODY_BYTES)"))
    @blp.alt_response(415, **schemas.error_doc(
        415, "send the body as JSON (Content-Type: application/json)"))
    @blp.alt_response(422, schema=ErrorSchema, example=schemas.EXAMPLE_INVALID_PLAN,
                      description="the plan is not valid: ``errors`` says where, field by field")
    def post(self, body: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """Submit a plan; its steps run in order, one Celery task each.

        With an ``Idempotency-Key``, sending the same body again returns the first run
        (``200``) instead of making another; the same key with another body is ``409``.
        """
        run, created = service.submit_run(body["plan"], idempotency_key=idempotency_key,
                                          as_sent=g.json_body["plan"])
        if not created:
            return run, 200
        return run, 201, {"Location": url_for("runs.RunById", run_id=run["id"])}

    @blp.arguments(schemas.RunListArgsSchema, location="query", unknown=RAISE)
    @blp.response(200, schemas.RunPageSchema, example=schemas.EXAMPLE_RUN_PAGE)
    def get(self, args: dict[str, Any]) -> Any:
        """List runs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        items, after = service.list_runs(args.get("status"), args["limit"],
                                         decode_cursor(args.get("cursor")),
                                         get_settings().page_max_bytes)
        return {"items": items, "next_cursor": encode_cursor(after)}


@blp.route("/<string:run_id>", parameters=[schemas.run_id_param()])
class RunById(MethodView):
    @blp.response(200, schemas.RunSchema, example=schemas.EXAMPLE_RUN)
    @blp.alt_response(404, **RUN_NOT_FOUND)
    def get(self, run_id: str) -> Any:
        """A run with its steps (in plan order) and artifacts."""
        return service.get_run(run_id)


@blp.route("/<string:run_id>/events", parameters=[schemas.run_id_param()])
class RunEvents(MethodView):
    @blp.arguments(schemas.EventArgsSchema, location="query", unknown=RAISE)
    @blp.response(200, schemas.EventPageSchema, example=schemas.EXAMPLE_EVENT_PAGE)
    @blp.alt_response(404, **RUN_NOT_FOUND)
    def get(self, args: dict[str, Any], run_id: str) -> Any:
        """A run's events in id order, after the event id ``after``."""
        return {"items": service.list_events(run_id, args["after"], args["limit"])}


@blp.route("/<string:run_id>/events/stream", parameters=[schemas.run_id_param()])
class RunEventStream(MethodView):
    @blp.arguments(schemas.StreamArgsSchema, location="query", unknown=RAISE)
    @blp.arguments(schemas.StreamHeadersSchema, location="headers", as_kwargs=True)
    @blp.response(200, content_type="text/event-stream", example=schemas.EXAMPLE_STREAM,
                  description="Server-Sent Events: `id:` is the event id, `data:` the Event "
                              "as JSON; `: keep-alive` comments while nothing happens; the "
                              "stream ends after `run.finished`")
    @blp.alt_response(404, **RUN_NOT_FOUND)
    @blp.alt_response(503, headers={"Retry-After": {
        "description": "seconds to wait before asking again", "schema": {"type": "integer"}}},
        **schemas.error_doc(
            503, "this server already has 6 open event streams; retry shortly, or read "
                 "GET /runs/3f0f6bd4-4a55-4c38-9b1c-1b6f7f1f2a10/events",
            "this server process has `NOFX_SSE_MAX_STREAMS` streams open already"))
    def get(self, args: dict[str, Any], run_id: str, last_event_id: int | None = None) -> Response:
        """Follow a run's events live, from the durable log, until the run has finished.

        Resumes after ``Last-Event-ID`` (sent by EventSource on reconnect) or else after
        ``after``; nothing is lost or repeated across reconnects. A stream lasts at most
        ``NOFX_SSE_MAX_S`` (then reconnect, as after any drop), and a server process holds
        at most ``NOFX_SSE_MAX_STREAMS`` at once (``503`` with ``Retry-After`` beyond).
        """
        service.require_run(run_id)
        after = last_event_id if last_event_id is not None else args["after"]
        return stream.response(run_id, after, _pace(), get_settings().sse_max_streams)


@blp.route("/<string:run_id>/artifacts", parameters=[schemas.run_id_param()])
class RunArtifacts(MethodView):
    @blp.response(200, schemas.ArtifactPageSchema, example=schemas.EXAMPLE_ARTIFACT_PAGE)
    @blp.alt_response(404, **RUN_NOT_FOUND)
    def get(self, run_id: str) -> Any:
        """A run's artifacts."""
        return {"items": service.list_artifacts(run_id)}


@blp.route("/<string:run_id>/cancel", parameters=[schemas.run_id_param()])
class RunCancel(MethodView):
    @blp.response(200, schemas.RunSchema, example=schemas.EXAMPLE_RUN)
    @blp.alt_response(404, **RUN_NOT_FOUND)
    @blp.alt_response(409, **schemas.error_doc(
        409, "run 3f0f6bd4-4a55-4c38-9b1c-1b6f7f1f2a10 has already finished; "
             "only queued or running runs cancel"))
    def post(self, run_id: str) -> Any:
        """Cancel a queued or running run: its queued and running steps end cancelled."""
        return service.cancel_run(run_id)


@blp.route("/<string:run_id>/retry", parameters=[schemas.run_id_param()])
class RunRetry(MethodView):
    @blp.response(200, schemas.RunSchema, example=schemas.EXAMPLE_RUN)
    @blp.alt_response(404, **RUN_NOT_FOUND)
    @blp.alt_response(409, **schemas.error_doc(
        409, "run 3f0f6bd4-4a55-4c38-9b1c-1b6f7f1f2a10 is not failed or cancelled; "
             "only those can be retried"))
    def post(self, run_id: str) -> Any:
        """Resume a failed or cancelled run from its first unsuccessful step."""
        return service.resume_run(run_id)


def _pace() -> stream.Pace:
    settings = get_settings()
    return stream.Pace(poll_s=settings.sse_poll_s, keepalive_s=settings.sse_keepalive_s,
                       max_s=settings.sse_max_s)


def encode_cursor(after: tuple[datetime, str] | None) -> str | None:
    """The opaque ``next_cursor`` for a page that ends at ``(created_at, id)``."""
    if after is None:
        return None
    raw = f"{after[0].isoformat()}|{after[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """``(created_at, id)`` back from a cursor; ``422`` for anything this API did not make."""
    if not cursor:
        return None
    try:
        if len(cursor) > 200:
            raise ValueError("cursor too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, run_id = raw.split("|", 1)
        parsed = datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("cursor time has no zone")
        return parsed.astimezone(UTC), str(UUID(run_id))
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        abort(422, message="invalid cursor",
              errors={"query": {"cursor": ["not a cursor from this API"]}})
    return None
