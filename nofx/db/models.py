"""The schema: runs, steps, events, artifacts, and the components' heartbeats.

Alembic owns the live schema (``nofx/db/migrations``); these tables are what the code
queries and what ``alembic revision --autogenerate`` compares against.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
#: SQLite only autoincrements an ``INTEGER PRIMARY KEY``.
EventId = BigInteger().with_variant(Integer(), "sqlite")
Id = String(36)

runs = Table(
    "runs",
    metadata,
    Column("id", Id, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("goal", Text, nullable=False),
    Column("plan", JSONType, nullable=False),
    # The plan's length in JSON as the API writes it (``GET /runs`` pages by it); NULL in
    # rows from before migration 0006.
    Column("plan_bytes", Integer, nullable=True),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("request_hash", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("dispatched_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    # Newest-first listing, optionally by status, with a keyset cursor.
    Index("ix_runs_created", "created_at", "id"),
    Index("ix_runs_status_created", "status", "created_at", "id"),
    # The reaper's look for runs accepted but never started.
    Index(
        "ix_runs_queued",
        "updated_at",
        postgresql_where=text("status = 'queued'"),
        sqlite_where=text("status = 'queued'"),
    ),
)

steps = Table(
    "steps",
    metadata,
    Column("id", Id, primary_key=True),
    Column("run_id", Id, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("index", Integer, nullable=False),
    Column("name", String(100), nullable=False),
    Column("tool", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("inputs", JSONType, nullable=False),
    Column("outputs", JSONType, nullable=True),
    Column("error", JSONType, nullable=True),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    # The attempts the step gets each time its run starts or resumes; NULL: max_attempts.
    # A resume keeps ``attempt`` and sets max_attempts to attempt + this (migration 0005).
    Column("attempt_budget", Integer, nullable=True),
    Column("timeout_s", Float, nullable=False),
    Column("task_id", String(64), nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("heartbeat_at", UTCDateTime, nullable=True),
    # Set on the one queued step that is due next (its run's chain should bring it by then);
    # the reaper redispatches a run whose due step is long overdue.
    Column("due_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_steps_run_index", "run_id", "index", unique=True),
    # Only running steps are indexed: the reaper and the gauges cost the same with a
    # million finished steps as with ten.
    Index(
        "ix_steps_running",
        "heartbeat_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index(
        "ix_steps_due",
        "due_at",
        postgresql_where=text("status = 'queued' AND due_at IS NOT NULL"),
        sqlite_where=text("status = 'queued' AND due_at IS NOT NULL"),
    ),
)

events = Table(
    "events",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", Id, nullable=True),
    Column("type", String(64), nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_events_run_id", "run_id", "id"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Id, primary_key=True),
    Column("run_id", Id, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", Id, ForeignKey("steps.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("storage_key", String(1024), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_artifacts_run_id", "run_id", "created_at"),
    Index("ix_artifacts_step_id", "step_id"),
)

#: Liveness of the reaper and of each worker, written by them, read by health and metrics.
components = Table(
    "components",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("info", JSONType, nullable=False),
    Index("ix_components_kind_seen", "kind", "seen_at"),
)

#: Counters that must survive restarts and agree across replicas: status transitions and
#: reaper actions (``nofx/db/counters.py``). Writers spread over a few shards.
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("labels", String(255), primary_key=True),
    Column("shard", SmallInteger, primary_key=True, server_default="0"),
    Column("value", BigInteger, nullable=False, server_default="0"),
)
