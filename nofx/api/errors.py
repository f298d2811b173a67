"""Every error is JSON in one shape; no stack trace ever reaches a client."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from nofx.db.engine import UNAVAILABLE
from nofx.errors import Busy, NofxError

log = logging.getLogger(__name__)


#: The message of a ``422`` whose ``errors`` names each field that is wrong.
FIELD_ERRORS = "invalid request: 'errors' says what is wrong, field by field"


def error_response(code: int, message: str, errors: Any = None) -> tuple[Response, int]:
    """``{"code", "status", "message", "errors"?}`` with HTTP status ``code``."""
    body: dict[str, Any] = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return jsonify(body), code


def init_app(app: Flask) -> None:
    """Register handlers for NOFX errors, HTTP errors and anything unexpected."""

    @app.errorhandler(NofxError)
    def _nofx(exc: NofxError) -> tuple[Response, int]:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc.message)
        return error_response(exc.http_status, exc.message, exc.errors)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        data = getattr(exc, "data", None) or {}
        field_errors = data.get("errors") or data.get("messages")
        message = data.get("message") or (
            FIELD_ERRORS if field_errors else exc.description or HTTPStatus(code).phrase
        )
        response, code = error_response(code, message, field_errors)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        response.headers.update(data.get("headers") or {})
        return response, code

    # Down, unreachable, a connection lost mid-request, or no pooled connection free
    # within the pool's timeout: all answer 503, which clients may retry.
    def _database(exc: Exception) -> tuple[Response, int]:
        log.error("database unavailable: %s", getattr(exc, "orig", None) or exc, exc_info=exc)
        return error_response(503, "the database is unavailable; try again shortly")

    for kind in UNAVAILABLE:
        app.register_error_handler(kind, _database)

    @app.errorhandler(Busy)
    def _busy(exc: Busy) -> tuple[Response, int]:
        response, code = error_response(exc.http_status, exc.message)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response, code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response(500, "internal error; it has been logged")
