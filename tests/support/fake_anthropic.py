"""A small HTTP server on loopback that speaks the Anthropic Messages API.

The real ``anthropic`` SDK talks to it through ``ANTHROPIC_BASE_URL``. Tests script its
answers per prompt: a reply list is matched when the prompt contains its token, so tests
running one after another (and workers in other processes) never take each other's replies.
Unscripted prompts get a 200 answer that quotes the prompt.

A request with ``"stream": true`` (how NOFX asks) is answered as the API streams: server-sent
events, the text in ``chunks`` deltas ``chunk_delay_s`` apart; a scripted reply can also
fail mid-answer (``stream_error``) or stop sending halfway (``cut_after``).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    text: str = "Hello from the fake Claude."
    input_tokens: int = 11
    output_tokens: int = 22
    raw: bytes | None = None  # sent as-is (malformed answers)
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)  # e.g. retry-after on a 429
    stop_reason: str = "end_turn"
    # Streamed answers only:
    chunks: int = 1  # text deltas the answer comes in
    chunk_delay_s: float = 0.0  # pause before each delta after the first
    stream_error: str | None = None  # an `error` event of this type after the first delta
    cut_after: int | None = None  # close the connection after this many deltas

    @classmethod
    def ok(cls, text: str, input_tokens: int = 11, output_tokens: int = 22) -> Reply:
        return cls(200, text, input_tokens, output_tokens)

    @classmethod
    def error(cls, status: int) -> Reply:
        return cls(status=status)

    @classmethod
    def malformed(cls) -> Reply:
        return cls(raw=b'{"id": "msg_broken", "type": "message", "content": [')


ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error",
}


@dataclass
class FakeAnthropic:
    """The server, its script and a record of every request it got."""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    _script: dict[str, list[Reply]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FakeAnthropic:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake._handle(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def script(self, token: str, replies: list[Reply]) -> None:
        """Answer prompts containing ``token`` with ``replies``, in order (then the default)."""
        with self._lock:
            self._script[token] = list(replies)

    def calls(self, token: str) -> list[dict[str, Any]]:
        """Requests whose prompt contained ``token``."""
        with self._lock:
            return [r for r in self.requests if token in _prompt(r["body"])]

    def _next_reply(self, prompt: str) -> Reply:
        with self._lock:
            for token, replies in self._script.items():
                if token in prompt and replies:
                    return replies.pop(0)
        return Reply.ok(f"# README\n\nAnswer to: {prompt}\n")

    def _handle(self, handler: BaseHTTPRequestHandler, raw_body: bytes) -> None:
        try:
            body = json.loads(raw_body or b"{}")
        except ValueError:
            body = {}
        prompt = _prompt(body)
        with self._lock:
            self.requests.append({"path": handler.path,
                                  "headers": {k.lower(): v for k, v in handler.headers.items()},
                                  "body": body})
        if handler.path.split("?")[0] != "/v1/messages":
            return _send(handler, 404, _error_body(404, f"no route {handler.path}"))
        reply = self._next_reply(prompt)
        if reply.delay_s:
            threading.Event().wait(reply.delay_s)
        if reply.raw is not None and not (body.get("stream") and reply.status == 200):
            return _send(handler, reply.status, reply.raw, reply.headers)
        if reply.status != 200:
            return _send(handler, reply.status, _error_body(reply.status, "scripted failure"),
                         reply.headers)
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": body.get("model", "claude-sonnet-4-5"),
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": reply.stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
        }
        if body.get("stream"):
            return _stream(handler, reply, message)
        _send(handler, 200, json.dumps(message).encode())


def _prompt(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return "\n".join(parts)


def _error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "api_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def _stream(handler: BaseHTTPRequestHandler, reply: Reply, message: dict[str, Any]) -> None:
    """The answer as the Messages API streams it (``message_start`` ... ``message_stop``)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("request-id", f"req_{uuid.uuid4().hex[:12]}")
    handler.send_header("Connection", "close")  # the body ends when the connection does
    handler.end_headers()
    text, n = reply.text, max(reply.chunks, 1)
    size = -(-len(text) // n) if text else 0
    deltas = [text[i:i + size] for i in range(0, len(text), size)] if text else []
    started = {**message, "content": [], "stop_reason": None,
               "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1}}

    def event(kind: str, data: Any) -> None:
        raw = data if isinstance(data, bytes) else json.dumps({"type": kind, **data}).encode()
        handler.wfile.write(b"event: " + kind.encode() + b"\ndata: " + raw + b"\n\n")
        handler.wfile.flush()

    try:
        if reply.raw is not None:  # a malformed event where the first should be
            return event("message_start", reply.raw)
        event("message_start", {"message": started})
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        event("ping", {})
        for i, delta in enumerate(deltas):
            if i and reply.chunk_delay_s:
                threading.Event().wait(reply.chunk_delay_s)
            if reply.cut_after is not None and i >= reply.cut_after:
                return  # the connection closes mid-answer
            event("content_block_delta",
                  {"index": 0, "delta": {"type": "text_delta", "text": delta}})
            if reply.stream_error:
                return event("error", {"error": {"type": reply.stream_error,
                                                 "message": "scripted failure mid-answer"}})
        event("content_block_stop", {"index": 0})
        event("message_delta", {"delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                                "usage": {"output_tokens": reply.output_tokens}})
        event("message_stop", {})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client went away


def _send(handler: BaseHTTPRequestHandler, status: int, payload: bytes,
          headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.send_header("request-id", f"req_{uuid.uuid4().hex[:12]}")
    handler.end_headers()
    try:
        handler.wfile.write(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client went away (a killed worker): nothing to answer
