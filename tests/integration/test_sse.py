"""``GET /runs/{id}/events/stream``: Server-Sent Events from the durable log, under gunicorn.

The API runs as gunicorn with two workers, so a reconnect may land on the other process;
the stream reads the database, so it does not matter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nofx.client import Client, sse_messages
from tests.support.api import event_of, pg_connections, tagged_database_url
from tests.support.procs import Proc, start_api, wait_until
from tests.support.runs import plan, step

FAST = {"NOFX_SSE_POLL_S": "0.05", "NOFX_SSE_KEEPALIVE_S": "0.2"}


@pytest.fixture(scope="module")
def api(stack_env: dict[str, str], logs_dir: Any, worker: Proc) -> Iterator[str]:
    """The API under gunicorn, two workers, polling and keep-alives made quick."""
    proc, url = start_api(f"api-sse-{uuid.uuid4().hex[:8]}", dict(stack_env, **FAST), logs_dir)
    yield url
    proc.stop()


def submit(url: str, body: dict[str, Any]) -> str:
    response = httpx.post(f"{url}/runs", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def logged_events(url: str, run_id: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/runs/{run_id}/events", timeout=30).json()["items"]


def read_stream(url: str, run_id: str, *, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None,
                stop_after: int | None = None) -> tuple[list[dict[str, Any]], httpx.Headers]:
    """Every SSE message until the server ends the stream, or until ``stop_after`` events."""
    messages: list[dict[str, Any]] = []
    timeout = httpx.Timeout(30, read=30)
    with httpx.stream("GET", f"{url}/runs/{run_id}/events/stream", headers=headers,
                      params=params, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        for message in sse_messages(response.iter_lines()):
            messages.append(message)
            if stop_after is not None and sum("data" in m for m in messages) >= stop_after:
                break  # leaving the block closes the connection mid-stream
    return messages, response.headers


def events_in(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event_of(m) for m in messages if "data" in m]


def a_few_seconds_of_work() -> dict[str, Any]:
    return plan(step("first", "echo", n=1), step("pause", "sleep", seconds=0.6),
                step("second", "echo", n=2), step("pause-again", "sleep", seconds=0.6),
                step("third", "echo", n=3))


def test_following_a_run_from_the_start_gives_every_event_once_then_ends(api):
    # given a run that takes a moment
    run_id = submit(api, a_few_seconds_of_work())

    # when its stream is read from the start until the server ends it
    messages, headers = read_stream(api, run_id)

    # then it is an event stream that is neither cached nor buffered, with a retry hint
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert int(messages[0]["retry"]) > 0
    # and it carried the whole log, each event once, with id: as the event id
    streamed = events_in(messages)
    assert streamed == logged_events(api, run_id)
    assert all(m["id"] == str(event_of(m)["id"]) for m in messages if "data" in m)
    # and it ended right after run.finished
    assert streamed[-1]["type"] == "run.finished"
    assert [e["type"] for e in streamed].count("run.finished") == 1


def test_a_client_that_drops_midway_resumes_with_last_event_id_and_misses_nothing(api):
    # given a run being followed, and a client that goes away after three events
    run_id = submit(api, a_few_seconds_of_work())
    first, _ = read_stream(api, run_id, stop_after=3)
    last_seen = first[-1]["id"]

    # when it comes back with Last-Event-ID (maybe to the other gunicorn worker)
    rest, _ = read_stream(api, run_id, headers={"Last-Event-ID": last_seen})

    # then the two streams together hold every event exactly once, in order
    together = events_in(first) + events_in(rest)
    assert together == logged_events(api, run_id)
    assert len({e["id"] for e in together}) == len(together)
    assert together[-1]["type"] == "run.finished"


def test_keep_alive_comments_flow_while_nothing_happens(api):
    # given a run whose only step sleeps longer than the keep-alive period
    run_id = submit(api, plan(step("nap", "sleep", seconds=1.5)))

    # when it is followed to its end
    messages, _ = read_stream(api, run_id)

    # then keep-alive comments came while the step slept, and the events are all there
    assert any("keep-alive" in m["comments"] for m in messages)
    assert events_in(messages) == logged_events(api, run_id)


def test_after_and_last_event_id_choose_where_the_stream_starts(api):
    # given a finished run
    run_id = submit(api, plan(step("a", "echo"), step("b", "echo")))
    client = Client(api)
    everything = list(client.stream(run_id))
    ids = [e["id"] for e in everything]

    # when streams start after the third event, by query and by header (which wins)
    by_query, _ = read_stream(api, run_id, params={"after": ids[2]})
    by_header, _ = read_stream(api, run_id, params={"after": ids[0]},
                               headers={"Last-Event-ID": str(ids[2])})
    # and one starts after the last event
    past_the_end, _ = read_stream(api, run_id, headers={"Last-Event-ID": str(ids[-1])})

    # then each carries exactly the events after its start, and the last one ends at once
    assert everything == logged_events(api, run_id)
    assert events_in(by_query) == events_in(by_header) == everything[3:]
    assert events_in(past_the_end) == []


def test_a_stream_of_an_unknown_run_is_a_json_404(api):
    response = httpx.get(f"{api}/runs/{uuid.uuid4()}/events/stream", timeout=10)
    assert response.status_code == 404
    assert response.json()["code"] == 404


def test_clients_that_go_away_free_their_threads_and_connections(stack_env, logs_dir, worker):
    # given an API with one process of two threads, and a run that will not end soon
    tag = f"nofx-sse-{uuid.uuid4().hex[:8]}"
    env = dict(stack_env, **FAST, NOFX_API_THREADS="2", NOFX_SSE_MAX_STREAMS="2",
               NOFX_DATABASE_URL=tagged_database_url(tag))
    proc, url = start_api(tag, env, logs_dir, workers=1)
    run_id = submit(url, plan(step("long", "sleep", seconds=120)))
    try:
        # when, five times over, two clients take both threads with a stream and go away
        for _ in range(5):
            with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=10)) as http, \
                    http.stream("GET", f"/runs/{run_id}/events/stream") as one, \
                    http.stream("GET", f"/runs/{run_id}/events/stream") as two:
                lines = [one.iter_lines(), two.iter_lines()]
                assert [next(line) for line in lines] == ["retry: 2000"] * 2

        # then the server saw each client go and ended its stream, so the threads came back
        # each time (else the next round could not be served), the process still answers,
        # and it holds no more database connections than its pool
        wait_until(lambda: proc.log().count("event stream ended: the client went away") == 10,
                   timeout=10, what="the server to end the ten abandoned streams")
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        wait_until(lambda: pg_connections(tag) <= 5, timeout=10, what="pool-sized connections")
    finally:
        httpx.post(f"{url}/runs/{run_id}/cancel", timeout=10)
        proc.stop()


def test_streams_past_the_cap_are_a_503_and_each_stream_ends_in_time(
        stack_env, logs_dir, worker):
    # given an API process of four threads that keeps at most two for streams, each for 5 s,
    # and a run that will not end soon
    tag = f"nofx-sse-{uuid.uuid4().hex[:8]}"
    env = dict(stack_env, **FAST, NOFX_API_THREADS="4", NOFX_SSE_MAX_STREAMS="2",
               NOFX_SSE_MAX_S="5")
    proc, url = start_api(tag, env, logs_dir, workers=1)
    run_id = submit(url, plan(step("long", "sleep", seconds=120)))
    path = f"/runs/{run_id}/events/stream"
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=10)) as http:
            with http.stream("GET", path) as one, http.stream("GET", path) as two:
                lines = [one.iter_lines(), two.iter_lines()]
                assert [next(line) for line in lines] == ["retry: 2000"] * 2
                # when a third client asks for a stream while two are open
                third = http.get(path)
                # then it is told, in JSON, to come back, and the process still serves
                assert third.status_code == 503 and third.headers["Retry-After"] == "5"
                assert "open event streams" in third.json()["message"]
                assert http.get("/health").status_code == 200
                assert http.get(f"/runs/{run_id}/events").status_code == 200
                # and the open streams end by themselves once their time is up, without
                # the run's end, so their clients resume as after any drop
                for rest in (list(lines[0]), list(lines[1])):
                    assert rest and not any("run.finished" in line for line in rest)
            wait_until(lambda: proc.log().count("reached NOFX_SSE_MAX_S") >= 2, timeout=10,
                       what="both streams to reach their time")
            # and then a stream is served again
            with http.stream("GET", path) as again:
                assert next(again.iter_lines()) == "retry: 2000"
    finally:
        httpx.post(f"{url}/runs/{run_id}/cancel", timeout=10)
        proc.stop()
