"""A small HTTP client for the NOFX API, used by the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

from nofx.config import get_settings

#: What ``GET /runs/{id}/events`` returns at most a call (its ``limit``'s maximum).
EVENT_PAGE = 1000
#: What ``GET /runs`` returns at most a call (its ``limit``'s maximum).
RUN_PAGE = 200
TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """The API answered with an error (its JSON message is kept)."""

    def __init__(self, status: int, body: Any, retry_after: str | None = None) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body
        self.retry_after = retry_after  # the Retry-After header, if the answer had one


def _retry_after(exc: Exception) -> float | None:
    """The wait a ``503`` asked for (``Retry-After`` in seconds, at most 30), if any."""
    try:
        return min(float(getattr(exc, "retry_after", None) or ""), 30.0)
    except ValueError:
        return None


class Client:
    """Talks to one NOFX API; the token comes from ``NOFX_API_TOKEN`` unless given."""

    def __init__(self, base_url: str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> None:
        settings = get_settings()
        self.base_url = (base_url or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")
        token = token if token is not None else (settings.api_tokens[0] if settings.api_tokens else "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.timeout = timeout

    def _json(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiError(response.status_code, body, response.headers.get("Retry-After"))
        return body

    def submit(self, plan_body: dict[str, Any], idempotency_key: str | None = None) -> dict:
        """``POST /runs``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self.http.post("/runs", json=plan_body, headers=headers))

    def run(self, run_id: str) -> dict:
        """``GET /runs/{id}``."""
        return self._json(self.http.get(f"/runs/{run_id}"))

    def runs(self, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict:
        """``GET /runs``: one page."""
        params: dict[str, str | int] = {"limit": limit, **({"status": status} if status else {}),
                                        **({"cursor": cursor} if cursor else {})}
        return self._json(self.http.get("/runs", params=params))

    def recent_runs(self, status: str | None = None, limit: int = 20) -> Iterator[dict]:
        """Up to ``limit`` runs, newest first, page after page: a page may hold fewer runs
        than asked for (``NOFX_PAGE_MAX_BYTES``), and asks for at most ``RUN_PAGE``."""
        cursor: str | None = None
        while limit > 0:
            page = self.runs(status, min(limit, RUN_PAGE), cursor)
            yield from page["items"][:limit]
            limit -= len(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return

    def events(self, run_id: str, after: int = 0, limit: int = EVENT_PAGE) -> list[dict]:
        """``GET /runs/{id}/events?after=&limit=``."""
        params = {"after": after, "limit": limit}
        return self._json(self.http.get(f"/runs/{run_id}/events", params=params))["items"]

    def history(self, run_id: str) -> Iterator[dict]:
        """Every event of the run so far, page after page."""
        after = 0
        while True:
            page = self.events(run_id, after)
            yield from page
            if len(page) < EVENT_PAGE:
                return
            after = page[-1]["id"]

    def cancel(self, run_id: str) -> dict:
        """``POST /runs/{id}/cancel``."""
        return self._json(self.http.post(f"/runs/{run_id}/cancel"))

    def retry(self, run_id: str) -> dict:
        """``POST /runs/{id}/retry``."""
        return self._json(self.http.post(f"/runs/{run_id}/retry"))

    def health(self) -> dict:
        """``GET /health``."""
        return self._json(self.http.get("/health"))

    def follow(self, run_id: str, *, timeout_s: float | None = None, poll_s: float = 0.5,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[dict]:
        """Yield a run's events as they happen until it ends (or ``timeout_s``).

        The run ends at a ``run.finished`` that no ``run.resumed`` follows: a retried run
        has an earlier attempt's ``run.finished`` in its log.
        """
        after, deadline, ended = 0, (time.monotonic() + timeout_s) if timeout_s else None, False
        while True:
            page = self.events(run_id, after)
            for event in page:
                after, ended = event["id"], ends_run(event, ended)
                yield event
            if len(page) == EVENT_PAGE:  # more are waiting
                continue
            if ended:
                return
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout_s:g}s")
            sleep(poll_s)

    def stream(self, run_id: str, after: int = 0, *, retries: int = 5,
               read_timeout_s: float = 60.0,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[dict]:
        """Follow ``GET /runs/{id}/events/stream`` until the run ends.

        A dropped connection, a server that stops or ends a long stream, and a server with
        no stream free (``503``, after its ``Retry-After``) are resumed with
        ``Last-Event-ID``, so each event is yielded once; ``retries`` failed reconnects in a
        row give up.
        The server ends the stream after the ``run.finished`` that ends the run, not after
        an earlier attempt's (a retried run), so that is where this ends too.
        """
        last, failures, ended = after, 0, False
        while True:
            fresh = False
            try:
                for event in self._stream_once(run_id, last, read_timeout_s):
                    last, failures, fresh = event["id"], 0, True
                    ended = ends_run(event, ended)
                    yield event
            except (httpx.TransportError, httpx.StreamError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status != 503:
                    raise
                failures += 1
                if failures > retries:
                    raise
                asked = _retry_after(exc)
                sleep(asked if asked is not None else min(0.5 * 2 ** failures, 5.0))
                continue
            # The server closed the stream: after the run's end, or it is stopping.
            if (ended or not fresh) and self.run(run_id)["status"] in TERMINAL:
                # Whatever came after ``last`` (the server stopped just then) is in the log.
                yield from self.events(run_id, last)
                return

    def _stream_once(self, run_id: str, after: int, read_timeout_s: float) -> Iterator[dict]:
        timeout = httpx.Timeout(self.timeout, read=read_timeout_s)
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        with self.http.stream("GET", f"/runs/{run_id}/events/stream", headers=headers,
                              timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            for message in sse_messages(response.iter_lines()):
                if "data" in message:
                    yield json.loads(message["data"])


def ends_run(event: dict[str, Any], ended: bool) -> bool:
    """Whether the run has ended once ``event`` is read, given whether it had before."""
    if event["type"] == "run.finished":
        return True
    return ended and event["type"] != "run.resumed"


def sse_messages(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events lines into messages: ``id``, ``data``, ``retry``, ``comments``.

    Follows the field rules of the SSE spec, so it reads a stream as a browser would.
    """
    message: dict[str, Any] = {"comments": []}
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line == "":
            if len(message) > 1 or message["comments"]:
                yield message
            message = {"comments": []}
        elif line.startswith(":"):
            message["comments"].append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in message:
                value = f"{message['data']}\n{value}"
            message[name] = value
    if len(message) > 1 or message["comments"]:
        yield message
