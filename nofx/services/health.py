"""Checks of everything NOFX depends on, each bounded in time so health never hangs."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from sqlalchemy import text

from nofx import adapters, status
from nofx.config import get_settings
from nofx.db.engine import get_engine
from nofx.services.reaper import last_run_at
from nofx.worker import app

CHECK_TIMEOUT_S = 1.5


def check_database() -> dict[str, Any]:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return {}


def check_broker() -> dict[str, Any]:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=1, interval_start=0)
    return {"transport": app.conf.broker_url.split("://", 1)[0]}


def check_storage() -> dict[str, Any]:
    adapters.storage().check()
    return {}


def check_workers() -> dict[str, Any]:
    replies = app.control.ping(timeout=1.0) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:
        raise RuntimeError("no worker answered a ping within 1s")
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
                           f"{settings.reap_every_s:g}s)")
    return {"last_run_age_s": round(age, 3)}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "workers": check_workers,
    "reaper": check_reaper,
}


def detailed(timeout_s: float = CHECK_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Run every check at once; one that does not answer within ``timeout_s`` counts as down."""
    results: dict[str, dict[str, Any]] = {}
    threads = []
    for name, check in CHECKS.items():
        thread = threading.Thread(target=_run, args=(name, check, results), daemon=True)
        thread.start()
        threads.append((name, thread))
    deadline = time.monotonic() + timeout_s
    for name, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if name not in results:
            results[name] = {"ok": False, "error": f"no answer within {timeout_s:g}s",
                             "latency_ms": round(timeout_s * 1000)}
    return {name: results[name] for name in CHECKS}


def _run(name: str, check: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        info = check()
        outcome = {"ok": True, **info}
    except Exception as exc:  # a health check reports failures, it never raises them
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    outcome["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    results.setdefault(name, outcome)
