"""Bearer tokens (``NOFX_API_TOKEN``): every endpoint but the public ones (``/health``,
``/health/ready``, ``/metrics``) needs one.

With no token the API is open, so it serves loopback clients only (unless
``NOFX_API_ALLOW_OPEN``). ``nofx api`` and NOFX's gunicorn config refuse to bind beyond
loopback then; this app-level rule holds under any server, plain gunicorn included. A
loopback client is one that connected from this machine, with no sign of a proxy (a proxy
on this machine, or on a Unix socket, would otherwise serve the world), and addressed the
API by a loopback name (otherwise a web page could reach it through DNS rebinding: a name
of its own, resolved to 127.0.0.1, makes the page's requests same-origin). A proxy that
adds no forwarding header (nginx's ``proxy_pass`` adds none by default) cannot be told from
a local client: behind any proxy, set a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

from apispec import BasePlugin
from flask import Flask, Response, request
from flask_smorest import Api

from nofx.api.errors import error_response
from nofx.config import get_settings

PUBLIC = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/health/ready"),
          ("HEAD", "/health/ready"), ("GET", "/metrics"), ("HEAD", "/metrics")}
UNAUTHORIZED = "BearerTokenRequired"
LOOPBACK_ONLY = "LoopbackOnly"
_MESSAGE = "a valid bearer token is required (Authorization: Bearer <token>)"
_LOOPBACK_ONLY = ("this API has no NOFX_API_TOKEN, so it serves loopback clients only "
                  "(addressing it as localhost or a loopback address, not through a proxy): "
                  "set NOFX_API_TOKEN (or NOFX_API_ALLOW_OPEN=1 to serve anyone)")
#: Headers a proxy adds: a request that carries one did not come from this machine's user.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP", "Via")
log = logging.getLogger(__name__)


def token_ok(presented: str, tokens: tuple[str, ...]) -> bool:
    """Compare against every configured token in constant time."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    return matched


def init_app(app: Flask, api: Api) -> None:
    """Require ``Authorization: Bearer <token>`` when tokens are configured; document it."""
    _document(api)
    settings = get_settings()
    tokens, loopback_only = settings.api_tokens, not settings.api_allow_open
    warned = False

    @app.before_request
    def _require_token() -> tuple[Response, int] | None:
        nonlocal warned
        if (request.method, request.path) in PUBLIC:
            return None
        if not tokens:
            if not loopback_only or local_request():
                return None
            if not warned:  # once a process: a scan must not flood the log
                warned = True
                log.warning("refused a client beyond loopback (%s, Host %r): no NOFX_API_TOKEN "
                            "is set", request.remote_addr, request.host)
            return error_response(403, _LOOPBACK_ONLY)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented and token_ok(presented.strip(), tokens):
            return None
        return _unauthorized(presented=bool(presented))


def local_request() -> bool:
    """Whether this request comes from this machine, directly, for a loopback name."""
    if not is_loopback(request.remote_addr):
        return False
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    origin = request.headers.get("Origin")
    return _loopback_name(request.host) and (not origin or _loopback_name(origin))


def _loopback_name(where: str) -> bool:
    """``where`` (a Host header, or an Origin) names this machine: localhost, a name under
    ``.localhost``, or a loopback address."""
    try:
        host = urlsplit(where if "//" in where else f"//{where}").hostname
    except ValueError:
        return False
    if not host:
        return False
    return host == "localhost" or host.endswith(".localhost") or is_loopback(host)


def is_loopback(address: str | None) -> bool:
    """Whether a client's address is on this machine (no address: a Unix socket's client)."""
    if not address:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped and mapped.is_loopback))


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
    api.spec.components.response(LOOPBACK_ONLY, {
        "description": "no NOFX_API_TOKEN is configured and the client is not on loopback",
        "content": {"application/json": {
            "schema": "Error",
            "example": {"code": 403, "status": "Forbidden", "message": _LOOPBACK_ONLY}}},
    })
    api.spec.plugins.append(_Unauthorized401())


class _Unauthorized401(BasePlugin):
    """Adds the 401 and 403 answers to every operation that needs a token (all but the
    public ones): 401 where tokens are configured, 403 where none is and the client is
    not on loopback."""

    def operation_helper(self, path: str | None = None, operations: dict | None = None,
                         **_: Any) -> None:
        for operation in (operations or {}).values():
            if isinstance(operation, dict) and operation.get("security") != []:
                responses = operation.setdefault("responses", {})
                responses["401"] = UNAUTHORIZED
                responses["403"] = LOOPBACK_ONLY
