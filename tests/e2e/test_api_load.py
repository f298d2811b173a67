"""The API under load and at shutdown, as production runs it: gunicorn with our config.

Each API here tags its database connections (``application_name``), so Postgres itself
can be asked how many it holds. Memory over 10,000 requests is measured by
``scripts/measure_api_memory.py``, not here: this suite only checks nothing is lost and
nothing leaks.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from nofx.client import sse_messages
from nofx.services import runs as service
from tests.support.api import pg_connections, tagged_database_url
from tests.support.procs import Proc, start_api, wait_until
from tests.support.runs import TERMINAL, plan, step

WORKERS, POOL_SIZE = 2, 5  # gunicorn processes; SQLAlchemy pool per process (nofx/db/engine.py)


@pytest.fixture()
def tagged_api(stack_env: dict[str, str], logs_dir: Any) -> Iterator[tuple[Proc, str, str]]:
    """A gunicorn API whose Postgres connections carry a tag unique to the test."""
    tag = f"nofx-api-{uuid.uuid4().hex[:8]}"
    proc, url = start_api(tag, dict(stack_env, NOFX_DATABASE_URL=tagged_database_url(tag)),
                          logs_dir, workers=WORKERS)
    yield proc, url, tag
    proc.stop()


class HealthWatch:
    """Asks ``/health`` over and over on its own connection; remembers every failure."""

    def __init__(self, url: str) -> None:
        self.url, self.answers = url, 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self._stop.is_set():
                try:
                    status = http.get("/health").status_code
                    self.answers += 1
                    if status != 200:
                        self.failures.append(f"HTTP {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.05)


def statuses(http: httpx.Client, ids: set[str]) -> dict[str, str]:
    """The status of each run in ``ids``, read by walking ``GET /runs`` page by page."""
    found: dict[str, str] = {}
    cursor = None
    while len(found) < len(ids):
        page = http.get("/runs", params={"limit": 200, **({"cursor": cursor} if cursor else {})})
        body = page.json()
        found.update({r["id"]: r["status"] for r in body["items"] if r["id"] in ids})
        cursor = body["next_cursor"]
        if cursor is None:
            break
    return found


def test_two_hundred_concurrent_submissions_are_all_accepted_and_all_finish(tagged_api, worker):
    _, url, tag = tagged_api
    body = plan(step("say", "echo", text="load"), goal=f"load {tag}")
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)

    with HealthWatch(url) as health, \
            httpx.Client(base_url=url, timeout=60, limits=limits) as http:
        # when 200 clients POST /runs at once
        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(lambda _: http.post("/runs", json=body), range(200)))
        ids = {a.json()["id"] for a in answers if a.status_code == 201}

        # then every one was accepted, and every run reaches a terminal state
        assert [a.status_code for a in answers] == [201] * 200 and len(ids) == 200
        def all_terminal() -> dict[str, str] | None:
            found = statuses(http, ids)
            return found if all(s in TERMINAL for s in found.values()) else None

        done: dict[str, str] = wait_until(  # type: ignore[assignment]
            all_terminal, timeout=180, interval=1, what="200 runs to finish")
        # and /health answered all along
        assert health.answers > 0 and health.failures == []

    assert len(done) == 200 and set(done.values()) == {"succeeded"}
    # and afterwards Postgres shows the API holding no more than its pools
    wait_until(lambda: pg_connections(tag) <= WORKERS * POOL_SIZE, timeout=10,
               what=f"at most {WORKERS * POOL_SIZE} API connections")
    print(f"\nafter 200 runs: {pg_connections(tag)} API connections in Postgres "
          f"(pools: {WORKERS} x {POOL_SIZE}); /health answered {health.answers} times")


def test_many_mixed_requests_leave_no_connection_behind_and_no_server_error(tagged_api):
    _, url, tag = tagged_api
    with httpx.Client(base_url=url, timeout=60) as http:
        run_id = http.post("/runs", json=plan(step("a", "echo"))).json()["id"]
        paths = ["/health", "/runs?limit=5", f"/runs/{run_id}", f"/runs/{run_id}/events",
                 f"/runs/{run_id}/artifacts", f"/runs/{uuid.uuid4()}", "/runs?limit=0",
                 "/metrics", "/openapi.json"]

        # when 1,000 requests of every kind arrive, twenty at a time
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda i: http.get(paths[i % len(paths)]).status_code,
                                  range(1000)))

    # then none was a server error, and the connections went back to the pools
    assert codes and max(codes) < 500
    wait_until(lambda: pg_connections(tag) <= WORKERS * POOL_SIZE, timeout=10,
               what=f"at most {WORKERS * POOL_SIZE} API connections")


def test_sigterm_ends_open_streams_cleanly_and_closes_every_database_connection(tagged_api):
    # given a client following a run that will not end soon
    proc, url, tag = tagged_api
    run_id = httpx.post(f"{url}/runs", json=plan(step("long", "sleep", seconds=120)),
                        timeout=30).json()["id"]
    received: list[dict[str, Any]] = []
    try:
        with httpx.stream("GET", f"{url}/runs/{run_id}/events/stream",
                          timeout=httpx.Timeout(30, read=60)) as response:
            lines = response.iter_lines()
            received.append(next(sse_messages(lines)))

            # when the API is told to stop
            proc.popen.send_signal(signal.SIGTERM)

            # then the stream ends cleanly (a cut connection would raise here)
            received.extend(sse_messages(lines))
        # and gunicorn exits normally, having ended the stream itself rather than waiting
        # for it, and leaves no connection behind in Postgres
        assert proc.popen.wait(timeout=60) == 0
        assert "event stream ended: the server is stopping" in proc.log()
        wait_until(lambda: pg_connections(tag) == 0, timeout=10, what="no API connections")
    finally:
        service.cancel_run(run_id)
    assert "retry" in received[0]
