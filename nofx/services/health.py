"""Checks of everything NOFX depends on, each bounded in time so health never hangs.

Every check runs in a thread of its own; one that has not answered within
``CHECK_TIMEOUT_S`` counts as down. A check still hanging from an earlier request is waited
on again rather than started twice, so a dead dependency cannot pile up threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from nofx import adapters, status
from nofx.config import get_settings
from nofx.db import clock, migrate
from nofx.db.engine import get_engine
from nofx.logs import redact
from nofx.services.reaper import last_run_at
from nofx.worker import app

CHECK_TIMEOUT_S = 1.5
WORKER_REPLY_S = 1.0

Check = Callable[[], dict[str, Any]]


def check_database() -> dict[str, Any]:
    """Answers, and holds the schema this code needs (workers fail every step otherwise);
    with how far this host's clock is from the database server's (Postgres), which is
    reported, not judged: a skewed clock is the host's to fix, not a reason to stop serving."""
    with get_engine().connect() as conn:
        schema = migrate.revision(conn)  # a database that does not answer raises here
        skew = clock.skew_s(conn)
    problem = migrate.schema_problem(schema)
    if problem:
        raise RuntimeError(problem)
    return {"schema": schema, **({} if skew is None else {"clock_skew_s": skew})}


def check_broker() -> dict[str, Any]:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=1, interval_start=0)
    return {}


def check_storage() -> dict[str, Any]:
    adapters.storage().check()
    return {}


def check_workers() -> dict[str, Any]:
    """Workers that answer within ``WORKER_REPLY_S`` and consume NOFX's queue."""
    queue = get_settings().queue
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=1, interval_start=0)
        replies = app.control.inspect(timeout=WORKER_REPLY_S, connection=conn).active_queues()
    names = sorted(name for name, queues in (replies or {}).items()
                   if any(q.get("name") == queue for q in queues or []))
    if not names:
        others = f"; {len(replies)} worker(s) on other queues answered" if replies else ""
        raise RuntimeError(f"no worker consuming {queue!r} answered within "
                           f"{WORKER_REPLY_S:g}s{others}")
    return {"workers": names}


def check_reaper() -> dict[str, Any]:
    settings = get_settings()
    last = last_run_at()
    allowed = max(settings.reap_every_s * 3, 30.0)
    if last is None:
        raise RuntimeError("the reaper has never run: is `celery -A nofx.worker beat` running?")
    age = (status.now() - last).total_seconds()
    if age > allowed:
        raise RuntimeError(f"the reaper last ran {age:.0f}s ago (expected every "
                           f"{settings.reap_every_s:g}s): is `celery -A nofx.worker beat` running?")
    return {"last_run_age_s": round(age, 3), "last_run_at": last.isoformat()}


CHECKS: dict[str, Check] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "workers": check_workers,
    "reaper": check_reaper,
}


def targets() -> dict[str, str]:
    """What each check talks to, with any password masked (so an answer names the culprit)."""
    from kombu.utils.url import maybe_sanitize_url
    from sqlalchemy.engine import make_url

    settings = get_settings()
    storage = settings.storage_url + (f" at {settings.s3_endpoint}" if settings.s3_endpoint
                                      and settings.storage_url.startswith("s3://") else "")
    return {
        "database": make_url(settings.database_url).render_as_string(hide_password=True),
        "broker": maybe_sanitize_url(settings.broker_url),
        "storage": storage,
        "workers": f"queue {settings.queue}",
    }


def ready(timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    """Whether the database answers with the schema this code needs, within ``timeout_s``."""
    return bool(_start("database", check_database).wait(timeout_s)["ok"])


def detailed(timeout_s: float = CHECK_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Run every check at once: ``{name: {"ok", "latency_ms", "error"?, "target"?, ...}}``."""
    running = {name: _start(name, check) for name, check in CHECKS.items()}
    deadline = time.monotonic() + timeout_s
    where = targets()
    results = {}
    for name, job in running.items():
        outcome = job.wait(max(0.0, deadline - time.monotonic()))
        results[name] = {**({"target": where[name]} if name in where else {}), **outcome}
    return results


class _Job:
    """One run of one check, in a daemon thread."""

    def __init__(self, name: str, check: Check) -> None:
        self.check = check
        self.started = time.monotonic()
        self.done = threading.Event()
        self.outcome: dict[str, Any] = {}
        threading.Thread(target=self._run, name=f"health-{name}", daemon=True).start()

    def _run(self) -> None:
        try:
            outcome = {"ok": True, **self.check()}
        except Exception as exc:  # noqa: BLE001 - a health check reports failures, never raises them
            outcome = {"ok": False, "error": redact(f"{type(exc).__name__}: {exc}")[:500]}
        outcome["latency_ms"] = round((time.monotonic() - self.started) * 1000, 1)
        self.outcome = outcome
        self.done.set()

    def wait(self, timeout_s: float) -> dict[str, Any]:
        if self.done.wait(timeout_s):
            return dict(self.outcome)
        waited = time.monotonic() - self.started
        return {"ok": False, "error": f"no answer after {waited:.1f}s",
                "latency_ms": round(waited * 1000, 1)}


_jobs: dict[str, _Job] = {}
_jobs_lock = threading.Lock()


def _start(name: str, check: Check) -> _Job:
    with _jobs_lock:
        job = _jobs.get(name)
        if job is None or job.done.is_set():
            job = _jobs[name] = _Job(name, check)
        return job
