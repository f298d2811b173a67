"""Per-request plumbing: a request id for logs and responses, and content-type checks."""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_smorest import abort
from webargs.flaskparser import FlaskParser

from nofx.api.errors import error_response
from nofx.logs import bind

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def init_app(app: Flask) -> None:
    """Tag each request with an id, echoed in ``X-Request-ID`` and bound to every log line."""

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        bind(request_id=g.request_id, run_id=None, step_id=None, task_id=None)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        bind(request_id=None)
        return response


def check_body() -> tuple[Response, int] | None:
    """``415`` for a body that is not JSON; ``413`` for one over ``MAX_CONTENT_LENGTH``.

    Registered per blueprint (``blp.before_request``), so it runs after the app-wide
    checks: a caller with no token hears ``401`` before anything about its body.
    """
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not (chunked or (request.content_length or 0) > 0):
        return None
    if not request.is_json:
        return error_response(415, "send the body as JSON (Content-Type: application/json)")
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if chunked and limit is not None:
        return _read_streamed_body(limit)
    if limit is not None and (request.content_length or 0) > limit:
        return _too_large(limit)
    return None


def _read_streamed_body(limit: int) -> tuple[Response, int] | None:
    # Werkzeug quietly cuts a streamed (chunked) body at the limit, and the JSON then looks
    # broken; read it here (the server has de-chunked it) and say what is really wrong.
    data = request.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        return _too_large(limit)
    request.environ.update({"wsgi.input": io.BytesIO(data), "wsgi.input_terminated": True})
    return None


def _too_large(limit: int) -> tuple[Response, int]:
    return error_response(413, f"the body is larger than {limit} bytes (NOFX_MAX_BODY_BYTES)")


class JsonBodyParser(FlaskParser):
    """webargs' parser, with a body nested deeper than Python's JSON decoder recurses (a
    ``RecursionError``, not a decoding error) answered ``400`` like any unreadable body."""

    def _raw_load_json(self, req: Any) -> Any:
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            abort(400, message="the JSON body is nested too deeply to read")
        except ValueError as exc:  # not a decoding error: e.g. an integer of 4,301 digits
            if isinstance(exc, json.JSONDecodeError):
                raise
            abort(400, message=f"the JSON body cannot be read: {exc}")
