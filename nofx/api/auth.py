"""Bearer tokens (``NOFX_API_TOKEN``): every endpoint but the two public ones needs one."""

from __future__ import annotations

import hmac

from flask import Flask, Response, request
from flask_smorest import Api

from nofx.api.errors import error_response
from nofx.config import get_settings

PUBLIC = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/metrics"), ("HEAD", "/metrics")}


def token_ok(presented: str, tokens: tuple[str, ...]) -> bool:
    """Compare against every configured token in constant time."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    return matched


def init_app(app: Flask, api: Api) -> None:
    """Require ``Authorization: Bearer <token>`` when tokens are configured."""
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    api.spec.options["security"] = [{"bearerAuth": []}]
    tokens = get_settings().api_tokens

    @app.before_request
    def _require_token() -> tuple[Response, int] | None:
        if not tokens or (request.method, request.path) in PUBLIC:
            return None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented and token_ok(presented.strip(), tokens):
            return None
        response, code = error_response(401, "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="nofx"'
        return response, code
