"""Helpers for operator-facing tests: scraping metrics, stuck steps, private servers, the CLIs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update

from tests.support.procs import ROOT, Proc, free_port, stopped_unless_ready, wait_http, wait_until


class Scrape:
    """One scrape of a Prometheus endpoint, parsed with prometheus-client's own parser."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.families = {f.name: f for f in text_string_to_metric_families(body)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    @classmethod
    def of(cls, url: str) -> Scrape:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200, response.text
        return cls(response.text)

    def value(self, name: str, **labels: str) -> float:
        """The sample called ``name`` whose labels include ``labels`` (0 when absent)."""
        found = [s.value for s in self.samples
                 if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample called ``name`` whose labels include ``labels``."""
        return sum(s.value for s in self.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def moved_since(self, earlier: Scrape, name: str, **labels: str) -> float:
        """How much the samples matching ``name`` and ``labels`` grew since ``earlier``."""
        return self.total(name, **labels) - earlier.total(name, **labels)

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


# -- stuck steps ---------------------------------------------------------------------------


@contextmanager
def reaper_paused() -> Iterator[None]:
    """Hold the reaper's advisory lock, so no reaper (beat's or in-process) acts meanwhile."""
    from nofx.db.engine import get_engine
    from nofx.services.reaper import REAPER_LOCK_ID

    with get_engine().connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": REAPER_LOCK_ID})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": REAPER_LOCK_ID})
            conn.commit()


def plant_stuck_step(tool: str, silent_for_s: float = 120.0) -> tuple[str, str]:
    """A run whose only step was claimed by a worker that went silent ``silent_for_s`` ago.

    It has no attempts left, so the reaper ends it ``failed`` without running it again.
    """
    from nofx import status
    from nofx.db.engine import transaction
    from nofx.db.models import steps

    run_id, step_id = status.new_id(), status.new_id()
    long_ago = status.now() - timedelta(seconds=silent_for_s)
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="made stuck on purpose", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "stuck", "tool": tool, "inputs": {},
            "max_attempts": 1, "timeout_s": 3600.0}])
        assert status.claim_step(conn, run_id, step_id, f"gone-{step_id}")
        conn.execute(update(steps).where(steps.c.id == step_id)
                     .values(started_at=long_ago, heartbeat_at=long_ago))
    return run_id, step_id


# -- private servers -----------------------------------------------------------------------


@contextmanager
def private_redis(logs_dir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A throwaway redis-server on a free loopback port (never the shared one)."""
    import redis

    port = free_port()
    with open(logs_dir / f"redis-{port}.log", "ab") as log:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: redis.Redis(port=port, socket_timeout=1).ping(), timeout=10,
                       what=f"redis on :{port}")
            yield port, proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def without_metrics_dir(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process whose own Prometheus figures must not land in NOFX's directory."""
    return {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}


def celery_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``celery -A nofx.worker ARGS`` as an operator would type it."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "nofx.worker", *args],
                          cwd=ROOT, env=without_metrics_dir(env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def start_flower(name: str, env: dict[str, str], log_dir: Path, user: str,
                 password: str) -> tuple[Proc, str]:
    """``celery -A nofx.worker flower`` with basic auth on a free loopback port."""
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "nofx.worker", "flower", f"--port={port}",
            "--address=127.0.0.1", f"--basic_auth={user}:{password}"]
    proc = Proc(name, argv, without_metrics_dir(env), log_dir)
    url = f"http://127.0.0.1:{port}"
    with stopped_unless_ready(proc):
        wait_http(proc, f"{url}/healthcheck", what="flower")
    return proc, url


def start_prometheus(name: str, workdir: Path, config: dict[str, Any], rules: dict[str, Any],
                     log_dir: Path) -> tuple[Proc, str]:
    """The real Prometheus server (/usr/bin/prometheus) on a free loopback port."""
    import yaml

    (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(dict(config, rule_files=["rules.yml"])))
    port = free_port()
    argv = ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
    proc = Proc(name, argv, dict(os.environ), log_dir)
    url = f"http://127.0.0.1:{port}"
    with stopped_unless_ready(proc):
        wait_http(proc, f"{url}/-/ready", what="prometheus")
    return proc, url
