"""Server-Sent Events read from the durable event log (``GET /runs/{id}/events/stream``).

The stream is a loop over ``poll_events``: nothing lives in memory between polls and no
database connection is held while waiting or writing, so any API process can serve any
client, and a client that reconnects with ``Last-Event-ID`` misses nothing. When the client
goes away, the next write fails, the server closes the generator, and the loop ends.

An open stream holds one of its process's threads, so streams are capped: at most
``NOFX_SSE_MAX_STREAMS`` at once in a process (one more is a ``503`` with ``Retry-After``,
and the threads left serve everything else: health probes, submissions), each for at most
``NOFX_SSE_MAX_S`` (then it ends and its client resumes, as after any drop).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Response

from nofx.api import schemas
from nofx.errors import Busy
from nofx.services import runs as service

#: Set when this process is asked to stop (SIGTERM under gunicorn): open streams end at
#: once, cleanly, and their clients resume elsewhere with ``Last-Event-ID``.
shutting_down = threading.Event()
log = logging.getLogger(__name__)

BATCH = 500
MIN_POLL_S = 0.05
_EVENT = schemas.EventSchema()


@dataclass(frozen=True)
class Pace:
    """How often to read the log, to send a keep-alive, and to retry after a drop; how long
    one stream may last."""

    poll_s: float = 0.5
    keepalive_s: float = 15.0
    retry_ms: int = 2000
    max_s: float = 900.0


class Slots:
    """How many streams this process has open; :meth:`take` refuses one past the limit.

    :meth:`give` only posts the release to a ``SimpleQueue``, whose ``put`` is safe from a
    weakref callback or ``__del__`` (the garbage collector may run one in any thread, even
    while that thread holds the lock); the count is settled under the lock when read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._taken = 0

    def take(self, limit: int) -> bool:
        with self._lock:
            if self._settle() >= limit:
                return False
            self._taken += 1
            return True

    def give(self) -> None:
        self._given.put(None)

    @property
    def open(self) -> int:
        with self._lock:
            return self._settle()

    def _settle(self) -> int:
        while True:
            try:
                self._given.get_nowait()
            except queue.Empty:
                return self._taken
            self._taken -= 1


SLOTS = Slots()


class _Held:
    """A stream's frames, holding one of :data:`SLOTS` until the server closes it.

    The WSGI server calls ``close()`` however the response ends, even if it never started
    reading it (a generator's own ``finally`` would not run then). A response dropped
    unclosed (Flask drops it when an ``after_request`` hook raises) gives its slot back
    when it is collected."""

    def __init__(self, frames: Iterator[str]) -> None:
        self.frames = frames
        self._give = weakref.finalize(self, SLOTS.give)  # runs once, whichever comes first

    def __iter__(self) -> Iterator[str]:
        return self.frames

    def close(self) -> None:
        try:
            self.frames.close()  # type: ignore[attr-defined]
        finally:
            self._give()


def response(run_id: str, after: int, pace: Pace, max_streams: int) -> Response:
    """A streaming ``text/event-stream`` response for the run's events after ``after``;
    :class:`Busy` when this process already has ``max_streams`` open."""
    if not SLOTS.take(max_streams):
        log.warning("refused an event stream: %d are open in this process "
                    "(NOFX_SSE_MAX_STREAMS)", max_streams, extra={"run_id": run_id})
        raise Busy(f"this server already has {max_streams} open event streams; retry "
                   f"shortly, or read GET /runs/{run_id}/events")  # 503, Retry-After
    stream = Response(_Held(events(run_id, after, pace)), mimetype="text/event-stream")
    stream.headers["Cache-Control"] = "no-cache"
    stream.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return stream


def events(run_id: str, after: int, pace: Pace) -> Iterator[str]:
    """SSE frames for each event after ``after``; the last one is ``run.finished``.

    Whatever ends the stream (the run, the client, a stopping server, a failing database)
    ends it cleanly and says so in the log; the client resumes with ``Last-Event-ID``.
    """
    outcome = "the client went away"
    try:
        finished = yield from _follow(run_id, after, pace)
        outcome = ("the run finished" if finished else "the server is stopping"
                   if shutting_down.is_set() else "it reached NOFX_SSE_MAX_S; the client resumes")
    except Exception:  # the database, most likely: the client will reconnect
        outcome = "reading the event log failed"
        log.warning("event stream failed", exc_info=True, extra={"run_id": run_id})
    finally:
        log.info("event stream ended: %s", outcome, extra={"run_id": run_id})


def _follow(run_id: str, after: int, pace: Pace) -> Generator[str, None, bool]:
    """The frames; returns whether the run finished (else the server or the time is up)."""
    yield f"retry: {pace.retry_ms}\n\n"
    last_write = time.monotonic()
    deadline = last_write + pace.max_s
    while not shutting_down.is_set() and time.monotonic() < deadline:
        batch, ended = service.poll_events(run_id, after, BATCH)
        for event in batch:
            yield frame(event)
        if batch:
            after, last_write = batch[-1]["id"], time.monotonic()
        if len(batch) == BATCH:
            continue
        if ended and (not batch or batch[-1]["type"] == "run.finished"):
            return True
        if time.monotonic() - last_write >= pace.keepalive_s:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        shutting_down.wait(max(pace.poll_s, MIN_POLL_S))
    return False


def frame(event: dict[str, Any]) -> str:
    """One event as an SSE message: ``id:`` is the event id, ``data:`` the Event as JSON."""
    data = json.dumps(_EVENT.dump(event), separators=(",", ":"))
    return f"id: {event['id']}\ndata: {data}\n\n"
