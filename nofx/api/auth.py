"""Bearer tokens (``NOFX_API_TOKEN``): every endpoint but the two public ones needs one."""

from __future__ import annotations

import hmac
from typing import Any

from apispec import BasePlugin
from flask import Flask, Response, request
from flask_smorest import Api

from nofx.api.errors import error_response
from nofx.config import get_settings

PUBLIC = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/metrics"), ("HEAD", "/metrics")}
UNAUTHORIZED = "BearerTokenRequired"
_MESSAGE = "a valid bearer token is required (Authorization: Bearer <token>)"


def token_ok(presented: str, tokens: tuple[str, ...]) -> bool:
    """Compare against every configured token in constant time."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    return matched


def init_app(app: Flask, api: Api) -> None:
    """Require ``Authorization: Bearer <token>`` when tokens are configured; document it."""
    _document(api)
    tokens = get_settings().api_tokens

    @app.before_request
    def _require_token() -> tuple[Response, int] | None:
        if not tokens or (request.method, request.path) in PUBLIC:
            return None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented and token_ok(presented.strip(), tokens):
            return None
        return _unauthorized(presented=bool(presented))


def _unauthorized(presented: bool) -> tuple[Response, int]:
    response, code = error_response(401, _MESSAGE)
    # RFC 6750: say why when a token came and was refused, not when none came.
    challenge = 'Bearer realm="nofx"' + (', error="invalid_token"' if presented else "")
    response.headers["WWW-Authenticate"] = challenge
    return response, code


def _document(api: Api) -> None:
    api.spec.components.security_scheme(
        "bearerAuth",
        {"type": "http", "scheme": "bearer",
         "description": "One of the tokens in NOFX_API_TOKEN (comma-separated)."},
    )
    api.spec.options["security"] = [{"bearerAuth": []}]
    api.spec.components.response(UNAUTHORIZED, {
        "description": "no valid bearer token",
        "headers": {"WWW-Authenticate": {
            "description": "the scheme to use: Bearer", "schema": {"type": "string"},
            "example": 'Bearer realm="nofx", error="invalid_token"'}},
        "content": {"application/json": {
            "schema": "Error",
            "example": {"code": 401, "status": "Unauthorized", "message": _MESSAGE}}},
    })
    api.spec.plugins.append(_Unauthorized401())


class _Unauthorized401(BasePlugin):
    """Adds the 401 answer to every operation that needs a token (all but the public ones)."""

    def operation_helper(self, path: str | None = None, operations: dict | None = None,
                         **_: Any) -> None:
        for operation in (operations or {}).values():
            if isinstance(operation, dict) and operation.get("security") != []:
                operation.setdefault("responses", {})["401"] = UNAUTHORIZED
