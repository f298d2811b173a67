"""The benchmark bench: a private database, queue, API, NOFX worker and bare-Celery worker.

Everything runs on this machine on loopback: Postgres and Redis as configured for the tests
(``NOFX_BENCH_PG``, ``NOFX_BENCH_REDIS_URL``), an API under gunicorn, a prefork worker with
concurrency 2 for NOFX and one with the same settings for bare Celery.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import Engine, create_engine, text

from tests.support.procs import Proc, start_api, start_worker, wait_until

PG_SERVER = os.environ.get("NOFX_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("NOFX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]


class Bench:
    """Starts what a scenario needs; ``close()`` stops it all and drops the database."""

    def __init__(self, concurrency: int = 2) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.concurrency = concurrency
        self.dir = Path(tempfile.mkdtemp(prefix=f"nofx-bench-{self.id}-"))
        self.database = f"nofx_bench_{self.id}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NOFX_", "PROMETHEUS_"))},
            "NOFX_DATA_DIR": str(self.dir),
            "NOFX_DATABASE_URL": f"{PG_SERVER}/{self.database}",
            "NOFX_BROKER_URL": REDIS_URL,
            "NOFX_QUEUE": f"nofx-bench-{self.id}",
            "NOFX_STORAGE_URL": (self.dir / "artifacts").as_uri(),
            "NOFX_LLM_PROVIDER": "offline",
            "NOFX_WORKER_METRICS_PORT": "0",
            "NOFX_LOG_LEVEL": "INFO",  # as in production; bare Celery logs at INFO too
            "BARE_QUEUE": f"bare-{self.id}",
            "BARE_REDIS_URL": REDIS_URL,
            "BARE_PG_URL": f"{PG_SERVER}/{self.database}".replace("+psycopg", "", 1),
            "PYTHONPATH": str(ROOT),
        }
        self.procs: dict[str, Proc] = {}
        self.url = ""
        self._admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
        self._engine: Engine | None = None
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        from nofx.db.migrate import upgrade

        upgrade(self.env["NOFX_DATABASE_URL"])
        self.sql("CREATE TABLE bare_transitions (id bigserial PRIMARY KEY, task_id text NOT NULL,"
                 " what text NOT NULL, at timestamptz NOT NULL DEFAULT now())")

    # -- processes ---------------------------------------------------------------------

    def api(self, workers: int = 2) -> str:
        if "api" not in self.procs:
            self.procs["api"], self.url = start_api(f"api-{self.id}", self.env, self.dir, workers)
        return self.url

    def nofx_worker(self) -> Proc:
        if "nofx-worker" not in self.procs:
            self.procs["nofx-worker"] = start_worker(f"nofx-{self.id}", self.env, self.dir,
                                                     concurrency=self.concurrency)
        return self.procs["nofx-worker"]

    def bare_worker(self) -> Proc:
        if "bare-worker" not in self.procs:
            argv = [sys.executable, "-m", "celery", "-A", "bench.bare", "worker", "--pool",
                    "prefork", "-c", str(self.concurrency), "-l", "INFO", "-Q",
                    self.env["BARE_QUEUE"], "-n", f"bare-{self.id}@%h", "--without-mingle",
                    "--without-gossip"]
            proc = Proc(f"bare-{self.id}", argv, self.env, self.dir)
            from bench.bare import app

            def _ready() -> bool:
                return bool(app.control.ping(destination=[f"bare-{self.id}@{platform.node()}"],
                                             timeout=0.5))

            wait_until(_ready, timeout=60, what="the bare worker")
            self.procs["bare-worker"] = proc
        return self.procs["bare-worker"]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api(), timeout=60)

    def rss_mb(self, name: str) -> float:
        """Resident memory of a process and its children (the pool), in MiB."""
        root = psutil.Process(self.procs[name].pid)
        procs = [root, *root.children(recursive=True)]
        return round(sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20, 1)

    def cpu_seconds(self, worker: str) -> dict[str, dict[int, float]]:
        """CPU time (user + system) used so far, process by process, by what a drain keeps
        busy: the worker's main process, its pool, the Postgres backends of this bench's
        database (the API's and the bench's own idle connections among them) and Redis
        (every ``redis-server`` here). Diff two readings with :func:`cpu_used`."""
        main = psutil.Process(self.procs[worker].pid)
        groups: dict[str, list[psutil.Process]] = {
            "worker_main": [main], "worker_pool": main.children(recursive=True),
            "postgres_backends": [], "redis": [],
        }
        for proc in psutil.process_iter(["name", "cmdline"]):
            command = " ".join(proc.info["cmdline"] or [])
            if proc.info["name"] == "redis-server":
                groups["redis"].append(proc)
            elif command.startswith("postgres:") and f" {self.database} " in command:
                groups["postgres_backends"].append(proc)
        readings = {name: {p.pid: _cpu(p) for p in procs} for name, procs in groups.items()}
        return {name: {pid: t for pid, t in read.items() if t is not None}  # gone meanwhile
                for name, read in readings.items()}

    def sql(self, statement: str, **params: Any) -> Any:
        """Run one statement on the bench's database (one pooled connection: polling it
        must not cost a Postgres backend start each time, as bare Celery's polling of Redis
        does not)."""
        if self._engine is None:
            self._engine = create_engine(self.env["NOFX_DATABASE_URL"], pool_size=1)
        with self._engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.all() if result.returns_rows else None

    def close(self, keep_logs: bool = False) -> None:
        """Stop everything, drop the database and the bench's Redis keys, and remove its
        directory (its processes' logs), unless ``keep_logs``: then say where they are."""
        for proc in self.procs.values():
            proc.stop()
        from nofx.db.engine import dispose_engines

        dispose_engines()
        if self._engine is not None:
            self._engine.dispose()
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        self._admin.dispose()
        # and its two queues' keys in Redis (kombu's bindings, what was left in a queue);
        # only theirs: the Redis may be shared, and another key may contain these 8 digits
        import redis

        store = redis.Redis.from_url(REDIS_URL)
        stale = [key for queue in (self.env["NOFX_QUEUE"], self.env["BARE_QUEUE"])
                 for key in store.scan_iter(match=f"*{queue}*", count=1000)]
        if stale:
            store.delete(*stale)
        if keep_logs:
            print(f"bench {self.id}: its processes' logs are in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def cpu_used(before: dict[str, dict[int, float]],
             after: dict[str, dict[int, float]]) -> dict[str, tuple[float, int]]:
    """Seconds of CPU each group used between two :meth:`Bench.cpu_seconds` readings, and
    how many of its processes were alive at the second (a process that started in between
    counts from zero; one that ended in between is not counted)."""
    return {name: (sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in procs.items()),
                   len(procs))
            for name, procs in after.items()}


def _cpu(proc: psutil.Process) -> float | None:
    try:
        times = proc.cpu_times()
    except psutil.Error:  # gone meanwhile
        return None
    return times.user + times.system


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "python_loop_ms": python_loop_ms(),
    }


def python_loop_ms(n: int = 1_000_000, tries: int = 5) -> float:
    """How fast this host runs Python now: the best of ``tries`` timings of a fixed loop
    (lower is faster). The same VM lands on hosts of different speeds, and one host's speed
    drifts; a run's figures are only comparable with runs of a similar reading."""
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return round(ordered[index], 4)
