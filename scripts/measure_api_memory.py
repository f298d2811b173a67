#!/usr/bin/env python
"""Measure the API's memory over many requests: after 1,000 and after 10,000.

Serves the API as production does (gunicorn with ``nofx.api.gunicorn_conf``), except that
``--max-requests 0`` keeps gunicorn from recycling a worker mid-measurement, on a scratch
Postgres database (dropped at the end) and the serverless broker (nothing consumes it: the
runs stay queued, or are cancelled so their event streams end). Eight clients send a mix
of every kind of request: submissions, reads, pages, 404s, 422s, cancels, health, metrics
and event streams. Prints the resident memory of each gunicorn process and the database
connections it holds, after 1,000 requests and after 10,000; exits 1 if the API grew by
more than ``--max-growth`` (default 20%).

    .venv/bin/python scripts/measure_api_memory.py [--requests 10000] [--workers 2]

Needs Postgres on loopback (``NOFX_TEST_PG``, default postgresql+psycopg://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
PG_SERVER = os.environ.get("NOFX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
PLAN = {"plan": {"goal": "memory", "steps": [{"name": "say", "tool": "echo", "inputs": {"x": 1}}]}}


def main() -> int:
    args = _arguments()
    tag = f"nofx-mem-{uuid.uuid4().hex[:8]}"
    with scratch_database(tag) as url, serve(url, tag, args.workers) as (master, base_url):
        counter = itertools.count(1)
        # A new connection for every request, so both gunicorn processes take their share.
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=0)
        with httpx.Client(base_url=base_url, timeout=60, limits=limits) as http:
            figures = {}
            for mark in (1_000, args.requests):
                send_until(http, counter, mark, args.clients)
                time.sleep(1)  # let the last responses be written and the pools settle
                figures[mark] = memory(master), connections(tag)
                report(mark, *figures[mark])
    before, after = figures[1_000][0]["total"], figures[args.requests][0]["total"]
    growth = (after - before) / before
    print(f"growth from 1,000 to {args.requests:,} requests: {growth:+.1%} "
          f"(limit {args.max_growth:.0%})")
    return 0 if growth <= args.max_growth else 1


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-growth", type=float, default=0.20)
    return parser.parse_args()


# -- the server ---------------------------------------------------------------------------


@contextmanager
def scratch_database(tag: str) -> Iterator[str]:
    """A fresh database, migrated with Alembic, dropped on the way out."""
    from nofx.db.engine import dispose_engines
    from nofx.db.migrate import upgrade

    name = tag.replace("-", "_")
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(f"{PG_SERVER}/{name}")
        yield f"{PG_SERVER}/{name}"
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def serve(database_url: str, tag: str, workers: int) -> Iterator[tuple[psutil.Process, str]]:
    """gunicorn with NOFX's config on a free loopback port; stopped with SIGTERM."""
    data_dir = Path(tempfile.mkdtemp(prefix="nofx-mem-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOFX_")}
    env.update(NOFX_DATA_DIR=str(data_dir), NOFX_API_HOST="127.0.0.1", NOFX_API_PORT=str(port),
               NOFX_API_WORKERS=str(workers), NOFX_LLM_PROVIDER="offline",
               NOFX_DATABASE_URL=f"{database_url}?application_name={tag}",
               NOFX_LOG_LEVEL="WARNING", NOFX_SSE_POLL_S="0.05")
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:nofx.api.gunicorn_conf",
            "--max-requests", "0", "nofx.api:create_app()"]
    with open(data_dir / "api.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, proc)
            yield psutil.Process(proc.pid), url
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    shutil.rmtree(data_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check: Callable[[], bool], proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the API exited while starting")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the API did not come up")


# -- the load -----------------------------------------------------------------------------


def send_until(http: httpx.Client, counter: Iterator[int], mark: int, clients: int) -> None:
    """Send rounds of mixed requests from ``clients`` threads until ``mark`` have been sent."""
    lock = threading.Lock()
    sent = {"n": 0}

    def client(_: int) -> None:
        while True:
            for request in a_round(http):
                with lock:
                    if sent["n"] >= mark:
                        return
                    sent["n"] = next(counter)
                status = request()
                if status >= 500:
                    raise SystemExit(f"a server error ({status}): the API is not healthy")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))


def a_round(http: httpx.Client) -> Iterator[Callable[[], int]]:
    """One of everything; each item sends one request and returns its status."""
    run: dict[str, Any] = {}

    def submit() -> int:
        response = http.post("/runs", json=PLAN)
        run.update(response.json())
        return response.status_code

    def stream() -> int:
        with http.stream("GET", f"/runs/{run['id']}/events/stream") as response:
            for _ in response.iter_lines():
                pass
            return response.status_code

    yield submit
    yield lambda: http.get("/runs", params={"limit": 20}).status_code
    yield lambda: http.get(f"/runs/{run['id']}").status_code
    yield lambda: http.get(f"/runs/{run['id']}/events").status_code
    yield lambda: http.get(f"/runs/{run['id']}/artifacts").status_code
    yield lambda: http.get(f"/runs/{uuid.uuid4()}").status_code
    yield lambda: http.post("/runs", json={"plan": {"goal": "", "steps": []}}).status_code
    yield lambda: http.get("/health").status_code
    yield lambda: http.get("/metrics").status_code
    yield lambda: http.post(f"/runs/{run['id']}/cancel").status_code
    yield stream


# -- the figures --------------------------------------------------------------------------


def memory(master: psutil.Process) -> dict[str, float]:
    """Resident memory in MiB: the master, each worker, and the total."""
    figures = {"master": master.memory_info().rss / 2**20}
    for child in master.children():
        figures[f"worker {child.pid}"] = child.memory_info().rss / 2**20
    figures["total"] = sum(figures.values())
    return figures


def connections(tag: str) -> int:
    engine = create_engine(f"{PG_SERVER}/postgres")
    try:
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :tag"),
                {"tag": tag}).scalar_one()
    finally:
        engine.dispose()


def report(mark: int, rss: dict[str, float], pg: int) -> None:
    parts = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in rss.items())
    print(f"after {mark:,} requests: {parts}; Postgres connections held by the API: {pg}")


if __name__ == "__main__":
    sys.exit(main())
