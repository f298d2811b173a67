"""Server-Sent Events read from the durable event log (``GET /runs/{id}/events/stream``).

The stream is a loop over ``poll_events``: nothing lives in memory between polls and no
database connection is held while waiting or writing, so any API process can serve any
client, and a client that reconnects with ``Last-Event-ID`` misses nothing. When the client
goes away, the next write fails, the server closes the generator, and the loop ends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from flask import Response

from nofx.api import schemas
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
    """How often to read the log, to send a keep-alive, and to retry after a drop."""

    poll_s: float = 0.5
    keepalive_s: float = 15.0
    retry_ms: int = 2000


def response(run_id: str, after: int, pace: Pace) -> Response:
    """A streaming ``text/event-stream`` response for the run's events after ``after``."""
    stream = Response(events(run_id, after, pace), mimetype="text/event-stream")
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
        yield from _follow(run_id, after, pace)
        outcome = "the server is stopping" if shutting_down.is_set() else "the run finished"
    except Exception:  # the database, most likely: the client will reconnect
        outcome = "reading the event log failed"
        log.warning("event stream failed", exc_info=True, extra={"run_id": run_id})
    finally:
        log.info("event stream ended: %s", outcome, extra={"run_id": run_id})


def _follow(run_id: str, after: int, pace: Pace) -> Iterator[str]:
    yield f"retry: {pace.retry_ms}\n\n"
    last_write = time.monotonic()
    while not shutting_down.is_set():
        batch, ended = service.poll_events(run_id, after, BATCH)
        for event in batch:
            yield frame(event)
        if batch:
            after, last_write = batch[-1]["id"], time.monotonic()
        if len(batch) == BATCH:
            continue
        if ended and (not batch or batch[-1]["type"] == "run.finished"):
            return
        if time.monotonic() - last_write >= pace.keepalive_s:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        shutting_down.wait(max(pace.poll_s, MIN_POLL_S))


def frame(event: dict[str, Any]) -> str:
    """One event as an SSE message: ``id:`` is the event id, ``data:`` the Event as JSON."""
    data = json.dumps(_EVENT.dump(event), separators=(",", ":"))
    return f"id: {event['id']}\ndata: {data}\n\n"
