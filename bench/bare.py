"""Bare Celery, the baseline: the same broker and worker settings as NOFX, no bookkeeping.

Each task reports completion in Redis (one INCR or SET), which is how the harness knows
when the work is done without a result backend.

The ``durable_*`` tasks are a second baseline, the floor under any bookkeeping that records
each task's start and end durably: bare Celery plus two one-row INSERTs a task, each its own
committed transaction in Postgres (as NOFX's claim and success are), and nothing else.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

import celeryconfig

app = Celery("bare")
# Exactly NOFX's Celery settings (acks late, prefetch 1, json, task events...), minus its tasks.
app.config_from_object(celeryconfig)
app.conf.update(
    broker_url=os.environ.get("BARE_REDIS_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options={"visibility_timeout": celeryconfig.MAX_STEP_TIMEOUT_S + 3600},
    beat_schedule={}, task_default_queue=os.environ.get("BARE_QUEUE", "bare"),
    worker_hijack_root_logger=True,
)
_redis = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["BARE_REDIS_URL"])
    return _redis


_pg = None


def _record(task_id: str, what: str) -> None:
    """One committed one-row INSERT (a connection a pool process, opened after the fork)."""
    global _pg
    if _pg is None:
        import psycopg

        _pg = psycopg.connect(os.environ["BARE_PG_URL"], autocommit=True)
    _pg.execute("INSERT INTO bare_transitions (task_id, what) VALUES (%s, %s)", (task_id, what))


@app.task(name="bare.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="bare.noop")
def noop(key: str) -> None:
    _r().incr(key)


@app.task(name="bare.mark")
def mark(key: str) -> None:
    _r().set(key, repr(time.time()))


@app.task(name="bare.durable_sleep", bind=True)
def durable_sleep(self, seconds: float) -> None:  # type: ignore[no-untyped-def]
    _record(self.request.id, "started")
    time.sleep(seconds)
    _record(self.request.id, "finished")


@app.task(name="bare.durable_noop", bind=True)
def durable_noop(self, key: str) -> None:  # type: ignore[no-untyped-def]
    _record(self.request.id, "started")
    _record(self.request.id, "finished")
    _r().incr(key)
