"""Per-request plumbing: a request id for logs and responses, and content-type checks."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from nofx.api.errors import error_response
from nofx.logs import bind

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def init_app(app: Flask) -> None:
    """Tag each request with an id; refuse bodies that are not JSON."""

    @app.before_request
    def _start() -> tuple[Response, int] | None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        bind(request_id=g.request_id, run_id=None, step_id=None, task_id=None)
        has_body = (request.content_length or 0) > 0 or request.headers.get("Transfer-Encoding")
        if request.method in ("POST", "PUT", "PATCH") and has_body and not request.is_json:
            return error_response(415, "send the body as JSON (Content-Type: application/json)")
        return None

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        bind(request_id=None)
        return response
