"""``Client.follow`` and ``Client.stream`` end where the run ends, not at an earlier
attempt's ``run.finished`` (a retried run keeps it in its log).

The API is faked with ``httpx.MockTransport``: an event log that grows as the client reads
it, served by ``GET /runs/{id}/events`` pages and by the SSE stream.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from nofx import client as client_module
from nofx.client import Client

RUN = "run-1"
FIRST_ATTEMPT = ["run.created", "run.started", "step.started", "step.finished",
                 "run.finished", "run.resumed", "step.queued"]
SECOND_ATTEMPT = ["run.started", "step.started", "step.finished", "run.finished"]


class FakeApi:
    """An event log and a run status; ``later`` is appended after the first read."""

    def __init__(self, first: list[str], status: str, later: list[str] | None = None,
                 later_status: str | None = None, page_max: int = 1000,
                 busy: int = 0) -> None:
        self.busy = busy  # streams refused (503) before one is served
        self.log: list[dict[str, Any]] = []
        self.page_max = page_max  # the API's own ceiling on ``limit``
        self.status = status
        self.later, self.later_status = later or [], later_status
        self.reads = 0
        self._append(first)

    def _append(self, types: list[str]) -> None:
        for kind in types:
            self.log.append({"id": len(self.log) + 1, "run_id": RUN, "step_id": None,
                             "type": kind, "payload": {}, "created_at": "2026-12-06T00:00:00Z"})

    def _read(self, after: int, limit: int) -> list[dict[str, Any]]:
        self.reads += 1
        page = [e for e in self.log if e["id"] > after][:min(limit, self.page_max)]
        if self.reads == 1 and self.later:  # the retried attempt runs on after the first read
            self._append(self.later)
            self.status = self.later_status or self.status
        return page

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"/runs/{RUN}":
            return httpx.Response(200, json={"id": RUN, "status": self.status})
        if path == f"/runs/{RUN}/events":
            after, limit = int(request.url.params["after"]), int(request.url.params["limit"])
            return httpx.Response(200, json={"items": self._read(after, limit)})
        if path == f"/runs/{RUN}/events/stream" and self.busy:
            self.busy -= 1
            return httpx.Response(503, json={"message": "busy"}, headers={"Retry-After": "3"})
        if path == f"/runs/{RUN}/events/stream":
            # One connection serves what is there, then closes: as the server does after the
            # run's end, and as a stopping server does mid-run (the client reconnects).
            batch = self._read(int(request.headers["Last-Event-ID"]), 10_000)
            body = "retry: 10\n\n" + "".join(
                f"id: {e['id']}\ndata: {json.dumps(e)}\n\n" for e in batch)
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"message": "no such path"})


def client_for(api: FakeApi) -> Client:
    client = Client(base_url="http://nofx.test", token="")
    client.http = httpx.Client(base_url="http://nofx.test",
                               transport=httpx.MockTransport(api.handle))
    return client


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_follow_goes_past_an_earlier_attempts_end_to_the_resumed_runs_end():
    # given a run that failed, was retried, and finishes its second attempt while followed
    api = FakeApi(FIRST_ATTEMPT, "queued", later=SECOND_ATTEMPT, later_status="succeeded")

    # when it is followed from the start
    seen = list(client_for(api).follow(RUN, sleep=lambda _: None))

    # then every event of both attempts comes once, and following ends at the last one
    assert types(seen) == FIRST_ATTEMPT + SECOND_ATTEMPT
    assert [e["id"] for e in seen] == list(range(1, 12))


def test_follow_ends_at_run_finished_even_when_a_late_event_comes_after_it():
    # given a failed run whose log has one more event after its end (not a resume)
    api = FakeApi(["run.created", "run.started", "run.finished", "llm.usage"], "failed")

    # when it is followed, it yields everything and ends rather than waiting forever
    assert types(list(client_for(api).follow(RUN, sleep=lambda _: None)))[-2:] == [
        "run.finished", "llm.usage"]


def test_follow_reads_the_next_page_before_deciding_a_run_finished_on_a_page_boundary(
        monkeypatch: pytest.MonkeyPatch):
    # given pages of five events, the first attempt's end the last event of a full page
    monkeypatch.setattr(client_module, "EVENT_PAGE", 5)
    api = FakeApi(FIRST_ATTEMPT + SECOND_ATTEMPT, "succeeded")

    # then following reads on, past the resume, to the second attempt's end
    assert types(list(client_for(api).follow(RUN, sleep=lambda _: None))) == (
        FIRST_ATTEMPT + SECOND_ATTEMPT)


def test_stream_goes_past_an_earlier_attempts_end_to_the_resumed_runs_end():
    # given the same retried run, and a server whose first stream ends before the run does
    api = FakeApi(FIRST_ATTEMPT, "queued", later=SECOND_ATTEMPT, later_status="succeeded")

    # when it is streamed from the start, reconnecting as needed
    seen = list(client_for(api).stream(RUN))

    # then both attempts' events come once each, to the end of the second
    assert types(seen) == FIRST_ATTEMPT + SECOND_ATTEMPT
    assert [e["id"] for e in seen] == list(range(1, 12))


def test_stream_of_a_finished_run_ends_after_its_run_finished():
    api = FakeApi(["run.created", "run.started", "run.finished"], "succeeded")
    assert types(list(client_for(api).stream(RUN))) == ["run.created", "run.started",
                                                        "run.finished"]


def test_stream_waits_as_a_busy_server_asks_then_follows_to_the_end():
    # given a server with no stream free for the first two connections
    slept: list[float] = []
    api = FakeApi(FIRST_ATTEMPT + SECOND_ATTEMPT, "succeeded", busy=2)

    # then the client waits what it was asked to, twice, and then reads the whole run
    assert types(list(client_for(api).stream(RUN, sleep=slept.append))) == (
        FIRST_ATTEMPT + SECOND_ATTEMPT)
    assert slept == [3.0, 3.0]


def test_stream_gives_up_on_a_server_that_stays_busy():
    api = FakeApi(FIRST_ATTEMPT, "running", busy=10)
    with pytest.raises(client_module.ApiError, match="HTTP 503"):
        list(client_for(api).stream(RUN, retries=3, sleep=lambda _: None))
