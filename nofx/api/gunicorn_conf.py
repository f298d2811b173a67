"""gunicorn settings for the API: ``gunicorn -c python:nofx.api.gunicorn_conf 'nofx.api:create_app()'``.

Threads serve slow clients (event streams) without blocking a process; SIGTERM lets
in-flight requests finish within ``graceful_timeout``; each process closes its database
pool on the way out.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from nofx.config import get_settings

_settings = get_settings()

bind = [f"{_settings.api_host}:{_settings.api_port}"]
workers = int(os.environ.get("NOFX_API_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("NOFX_API_THREADS", "8"))
graceful_timeout = 30
timeout = 60
keepalive = 5
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()


def open_bind_problem() -> str | None:
    """Why binding would expose an open API, or ``None`` when it is fine."""
    settings = get_settings()
    if settings.api_tokens or settings.api_allow_open or _is_loopback(settings.api_host):
        return None
    return (f"refusing to serve {settings.api_host}:{settings.api_port} with no NOFX_API_TOKEN: "
            "anyone could submit runs. Set NOFX_API_TOKEN, bind 127.0.0.1, or pass "
            "--allow-open / NOFX_API_ALLOW_OPEN=1.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def on_starting(server: Any) -> None:
    problem = open_bind_problem()
    if problem:
        raise SystemExit(problem)
    if get_settings().api_allow_open and not get_settings().api_tokens:
        server.log.warning("serving with no NOFX_API_TOKEN on %s: anyone can submit runs", bind)


def post_fork(server: Any, worker: Any) -> None:
    from nofx.logs import setup_logging

    setup_logging("api")


def worker_exit(server: Any, worker: Any) -> None:
    from nofx.db.engine import dispose_engines

    dispose_engines()
