"""gunicorn settings for the API: ``gunicorn -c python:nofx.api.gunicorn_conf 'nofx.api:create_app()'``.

Threads serve slow clients (event streams) without blocking a process; SIGTERM lets
in-flight requests finish within ``graceful_timeout`` and ends open event streams at once
(their clients resume elsewhere with ``Last-Event-ID``); each process closes its database
pool on the way out. The pool (``nofx/db/engine.py``: 5, plus 5 overflow) covers the
default 8 threads, so a busy process never waits for a connection.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gunicorn import util
from gunicorn.util import parse_address

from nofx.config import get_settings

_settings = get_settings()

bind = [f"{_settings.api_host}:{_settings.api_port}"]
workers = _settings.api_workers
worker_class = "gthread"
threads = _settings.api_threads
graceful_timeout = 30
timeout = 60
keepalive = 5
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
logger_class = "nofx.logs.GunicornLogger"  # gunicorn's own lines as JSON too


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """A request gunicorn refuses itself (a request line or a header too long, a header it
    cannot parse) is answered in the API's JSON error shape, not gunicorn's HTML page."""
    body = json.dumps({"code": status_int, "status": reason,
                       "message": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's workers call ``util.write_error`` (gunicorn/workers/base.py, ``handle_error``)
# for these answers; this file is loaded in the master before the workers fork.
util.write_error = write_json_error


def open_bind_problem(binds: Sequence[str] | None = None) -> str | None:
    """Why binding ``binds`` would expose an open API, or ``None`` when it is fine.

    ``binds`` are gunicorn's addresses (``host:port``, ``unix:path``); by default the
    configured ``NOFX_API_HOST:NOFX_API_PORT``.
    """
    settings = get_settings()
    if binds is None:
        binds = [f"{settings.api_host}:{settings.api_port}"]
    exposed = [b for b in binds if not _is_local(b)]
    if not exposed or settings.api_tokens or settings.api_allow_open:
        return None
    return (f"refusing to serve {', '.join(exposed)} with no NOFX_API_TOKEN: "
            "anyone could submit runs. Set NOFX_API_TOKEN, bind 127.0.0.1, or pass "
            "--allow-open / NOFX_API_ALLOW_OPEN=1.")


def _is_local(bind: str) -> bool:
    address = parse_address(bind)
    if not isinstance(address, tuple):  # a unix socket or an inherited file descriptor
        return True
    from nofx.api.auth import is_loopback  # the app's own rule for clients, the same test

    host = address[0].strip("[]")
    return host == "localhost" or (bool(host) and is_loopback(host))  # "": every interface


def check_binds(binds: Sequence[str], log: Any) -> None:
    """Stop (``SystemExit``) before an open API binds beyond loopback; warn if allowed to."""
    problem = open_bind_problem(binds)
    if problem:
        raise SystemExit(problem)
    if not get_settings().api_tokens and not all(_is_local(b) for b in binds):
        log.warning("serving with no NOFX_API_TOKEN on %s: anyone can submit runs",
                    ", ".join(binds))


def on_starting(server: Any) -> None:
    # The addresses gunicorn will really bind (``-b`` on its command line included).
    check_binds(list(server.cfg.bind), server.log)
    from nofx.observe import use_own_metrics_dir

    # Before the workers fork: they all count HTTP figures into this replica's directory.
    use_own_metrics_dir(f"api-{os.getpid()}")


def on_exit(server: Any) -> None:
    from nofx.observe import multiprocess_dir, remove_metrics_dir

    path = multiprocess_dir()
    if path:
        remove_metrics_dir(Path(path))


def post_fork(server: Any, worker: Any) -> None:
    from nofx.logs import setup_logging

    setup_logging("api")


def post_worker_init(worker: Any) -> None:
    """On SIGTERM, end open event streams too, so the graceful stop need not wait for them;
    and keep the app's startup objects out of every later full garbage collection."""
    from nofx.api import stream
    from nofx.process import freeze_startup_objects

    freeze_startup_objects("api")

    stop_worker = signal.getsignal(signal.SIGTERM)

    def _on_term(signum: int, frame: Any) -> None:
        stream.shutting_down.set()
        if callable(stop_worker):
            stop_worker(signum, frame)

    signal.signal(signal.SIGTERM, _on_term)
    signal.siginterrupt(signal.SIGTERM, False)


def worker_exit(server: Any, worker: Any) -> None:
    from nofx.db.engine import dispose_engines

    dispose_engines()
