"""Per-request plumbing: a request id for logs and responses, and content-type checks."""

from __future__ import annotations

import io
import json
import re
import sys
import uuid
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_smorest import abort
from webargs.core import missing
from webargs.flaskparser import FlaskParser, is_json_request

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
    """webargs' parser, refusing with ``400`` JSON that Python would read by losing part of it
    (a key twice in one object: the first value would be dropped) or cannot read (nesting
    deeper than the decoder recurses, an integer of thousands of digits). The body as read
    is kept in ``g.json_body``: what the client sent, before any schema touched it."""

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req):
            return missing
        try:
            body = json.loads(_text(req.get_data(cache=True)), object_pairs_hook=_one_each)
        except RecursionError:
            abort(400, message="the JSON body is nested too deeply to read")
        except _Duplicate as exc:
            abort(400, message=f"the JSON body has the key {exc.key[:100]!r} more than once "
                               "in one object; only one value can be kept")
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            if "integer string conversion" in str(exc):
                abort(400, message="the JSON body cannot be read: it has a number with more "
                                   f"than {sys.get_int_max_str_digits()} digits")
            abort(400, message=f"the JSON body cannot be read: {exc}")
        g.json_body = body
        return body

    def load_querystring(self, req: Any, schema: Any) -> Any:
        """``422`` for a parameter given more than once (on the endpoints that take query
        parameters): webargs would read the first and drop the rest, so
        ``?status=failed&status=succeeded`` would quietly mean ``failed``."""
        repeated = sorted(k for k, values in req.args.lists() if len(values) > 1)
        if repeated:
            abort(422, errors={"query": {
                k: ["given more than once; give it once"] for k in repeated}})
        return super().load_querystring(req, schema)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:  # as webargs does: a decoding error, answered 400
        raise json.JSONDecodeError(f"Bytes decoding error : {exc.reason}", doc=str(exc.object),
                                   pos=exc.start) from exc


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _one_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: an object, unless a key comes twice in it."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return found
