"""Durable counters: exact, monotonic totals that every API replica reads alike.

Status transitions add to them in the transaction that makes the transition, so a total is
exactly the number of transitions, and reading it costs a handful of rows however large the
tables grow. Each transaction adds to one of a few shards at random, so concurrent workers
do not queue on one hot row; readers sum the shards.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from nofx.db.models import counters

SHARDS = 8
Key = tuple[str, str]  # (counter name, "label=value,label=value")
Tally = Counter  # of Key -> increment


def run_status(status: str) -> Key:
    """The key counting runs that entered ``status``."""
    return ("runs", f"status={status}")


def step_status(tool: str, status: str) -> Key:
    """The key counting steps of ``tool`` that entered ``status``."""
    return ("steps", f"tool={tool},status={status}")


def _upsert(insert: Any) -> Any:
    stmt = insert(counters)
    return stmt.on_conflict_do_update(
        index_elements=["name", "labels", "shard"],
        set_={"value": counters.c.value + stmt.excluded.value},
    )


#: Built once: SQLAlchemy caches its compiled form, and many rows go as one batch.
_UPSERT = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}


def shard() -> int:
    """The shard one transaction adds to."""
    return random.randrange(SHARDS)


def bump(conn: Connection, counts: Mapping[Key, int]) -> None:
    """Add ``counts`` in one statement (rows in a fixed order: no deadlock between writers)."""
    into = shard()
    rows = [{"name": name, "labels": labels, "shard": into, "value": n}
            for (name, labels), n in sorted(counts.items()) if n]
    if rows:
        conn.execute(_UPSERT[conn.dialect.name], rows)


def totals(conn: Connection, name: str) -> dict[str, int]:
    """Every series of counter ``name``: labels -> total over shards."""
    rows = conn.execute(
        select(counters.c.labels, func.sum(counters.c.value))
        .where(counters.c.name == name)
        .group_by(counters.c.labels)
    ).all()
    return {labels: int(total) for labels, total in rows}


def parse(labels: str) -> dict[str, str]:
    """``"tool=echo,status=queued"`` -> ``{"tool": "echo", "status": "queued"}``."""
    return dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
