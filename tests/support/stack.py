"""A private NOFX stack for one test: its own queue, API, workers and beat, on a chosen broker.

Crash tests kill workers and stop brokers; a private stack keeps that away from the
session's shared worker. It shares the session's Postgres database, S3 server and fake LLM.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from celery import Celery, chain

from tests.support.procs import Proc, free_port, start_api, start_beat, start_worker, wait_until
from tests.support.runs import TERMINAL


class Stack:
    """API + workers + beat sharing one queue and broker."""

    def __init__(self, base_env: dict[str, str], logs_dir: Path, broker_url: str) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.logs_dir = logs_dir
        self.env = dict(base_env, NOFX_BROKER_URL=broker_url,
                        NOFX_QUEUE=f"{base_env['NOFX_QUEUE']}-stack-{self.id}",
                        NOFX_WORKER_METRICS_PORT="0")
        self.procs: list[Proc] = []
        self.url = ""
        self.http: httpx.Client | None = None

    def start_api(self) -> Stack:
        proc, self.url = start_api(f"api-{self.id}", self.env, self.logs_dir, workers=1)
        self.procs.append(proc)
        self.http = httpx.Client(base_url=self.url, timeout=15)
        return self

    def start_worker(self, name: str, concurrency: int = 1) -> Proc:
        proc = start_worker(f"{name}-{self.id}", self.env, self.logs_dir, concurrency=concurrency)
        self.procs.append(proc)
        return proc

    def start_beat(self) -> Proc:
        proc = start_beat(f"beat-{self.id}", self.env, self.logs_dir)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        if self.http:
            self.http.close()
        for proc in reversed(self.procs):
            proc.stop()
        _delete_queue(self.env["NOFX_BROKER_URL"], self.env["NOFX_QUEUE"])

    # -- talking to it ------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        response = self.http.post("/runs", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def run(self, run_id: str) -> dict[str, Any]:
        assert self.http is not None
        return self.http.get(f"/runs/{run_id}").json()

    def events(self, run_id: str) -> list[dict[str, Any]]:
        assert self.http is not None
        return self.http.get(f"/runs/{run_id}/events").json()["items"]

    def wait_finished(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        def _done() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] in TERMINAL else None

        return wait_until(_done, timeout=timeout, interval=0.2,  # type: ignore[return-value]
                          what=f"run {run_id} to finish")

    def publisher(self) -> Celery:
        """A bare Celery client on this stack's broker and queue, to publish tasks by hand."""
        app = Celery("test-publisher", broker=self.env["NOFX_BROKER_URL"])
        app.conf.update(task_default_queue=self.env["NOFX_QUEUE"], task_serializer="json")
        return app

    def publish_chain(self, run_id: str, step_ids: list[str]) -> None:
        """Send a run's chain by hand, exactly as dispatch does (ids only)."""
        app = self.publisher()
        links = [app.signature("nofx.run_step", args=(run_id, sid), immutable=True)
                 for sid in step_ids]
        chain(*links, app.signature("nofx.finish_run", args=(run_id,), immutable=True)).apply_async()
        app.close()


def _delete_queue(broker_url: str, queue: str) -> None:
    """Delete a stack's queue from its broker (RabbitMQ keeps durable queues forever); best
    effort, bounded in time: a test may have stopped or hung the broker on purpose."""
    from kombu import Connection

    parts = urlsplit(broker_url)
    try:
        port = parts.port or {"amqp": 5672, "redis": 6379}.get(parts.scheme, 0)
        socket.create_connection((parts.hostname or "127.0.0.1", port), 0.5).close()
    except OSError:
        return  # stopped by the test: nothing to delete, and no time to lose finding out
    try:
        with Connection(broker_url, connect_timeout=2,
                        transport_options={"socket_connect_timeout": 2,
                                           "socket_timeout": 2}) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.queue_delete(queue)
            conn.default_channel.exchange_delete(queue)  # Celery declares one of that name
    except Exception:  # the broker is gone or wedged: nothing this test run can tidy
        pass


class PrivateRedis:
    """A redis-server of this test's own, on a free port, that the test may stop and start."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=10, what="private redis")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        wait_until(lambda: not self._answers(), timeout=5, what="private redis to stop")

    def _answers(self) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


def seconds_between(earlier_iso: str, later_iso: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(later_iso) - datetime.fromisoformat(earlier_iso)).total_seconds()


def now_iso() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat()


__all__ = ["PrivateRedis", "Stack", "now_iso", "seconds_between"]
