"""Requests gunicorn itself refuses, before the app sees them (a request line or a header too
long, a header it cannot parse), are answered in the API's JSON error shape too."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.procs import start_api


@pytest.fixture(scope="module")
def api(stack_env: dict[str, str], logs_dir: Any) -> Iterator[tuple[str, int]]:
    proc, url = start_api(f"api-errors-{uuid.uuid4().hex[:8]}", stack_env, logs_dir, workers=1)
    parts = urlsplit(url)
    yield parts.hostname or "127.0.0.1", parts.port or 80
    proc.stop()


def raw(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is; the status, headers and body of the answer."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "code"), [
    (b"GET /runs/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: a\x01b\r\n\r\n", 400),
], ids=["request line too long", "header too large", "control character in a header"])
def test_requests_gunicorn_refuses_get_a_json_error(api, request_bytes, code):
    status, headers, body = raw(api, request_bytes)
    assert status == code
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == code and error["status"] and error["message"]
    assert int(headers["content-length"]) == len(body)
