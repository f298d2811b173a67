"""Retention: delete ended runs older than a cutoff, with everything they own.

One run at a time, in a transaction of its own: the run is locked (a retry or cancel of it
waits, then finds it gone), its stored files (everything under ``runs/{run_id}/``, including
those of attempts that lost their step) are removed, and the run is deleted with its steps,
events and artifact rows. If its files cannot all be removed, the run keeps its rows (some of
its files may be gone already) and the prune stops: the store is failing. A prune killed
midway leaves at most the one run it was on in that state; the next prune finishes it.

The counters behind ``/metrics`` are totals of what happened and are not touched: pruning
a run does not make it not have happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from nofx import status
from nofx.db.engine import reading, transaction
from nofx.db.models import runs
from nofx.domain import RUN_TERMINAL
from nofx.storage import Storage

log = logging.getLogger(__name__)

BATCH = 200


@dataclass
class Pruned:
    """What a prune did (or, dry, would do)."""

    cutoff: datetime
    runs: int = 0
    files: int = 0
    #: The run whose files could not all be removed, kept (its rows; some of its files may
    #: be gone), and why: ``run_id: error``. The prune stopped there.
    kept: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"cutoff": self.cutoff.isoformat(), "runs": self.runs, "files": self.files,
                "kept": self.kept, "dry_run": self.dry_run}


def prune(older_than: timedelta, statuses: Iterable[str] = RUN_TERMINAL, *,
          dry_run: bool = False, batch: int = BATCH, at: datetime | None = None,
          storage: Storage | None = None, url: str | None = None,
          progress: Callable[[Pruned], None] | None = None) -> Pruned:
    """Delete runs in ``statuses`` (ended ones only) that ended more than ``older_than`` ago,
    ``batch`` at a time, calling ``progress`` after each batch; ``dry_run`` only counts.
    ``url`` and ``storage``: the configured database and artifact store unless given."""
    wanted = sorted(set(statuses) & set(RUN_TERMINAL))
    if not wanted:
        raise ValueError(f"only ended runs can be pruned: {', '.join(sorted(RUN_TERMINAL))}")
    result = Pruned(cutoff=(at or status.now()) - older_than, dry_run=dry_run)
    if dry_run:
        with reading(url) as conn:
            result.runs = conn.execute(
                select(func.count()).select_from(runs).where(*_prunable(wanted, result.cutoff))
            ).scalar_one()
        return result
    if storage is None:
        from nofx.adapters import storage as configured_storage

        storage = configured_storage()
    while True:
        with reading(url) as conn:
            chosen = conn.execute(
                select(runs.c.id).where(*_prunable(wanted, result.cutoff))
                .order_by(runs.c.created_at).limit(batch)
            ).scalars().all()
        for run_id in chosen:
            if not _prune_one(run_id, wanted, storage, result, url):
                break
        log.info("pruned %d runs that ended before %s so far", result.runs,
                 result.cutoff.isoformat(), extra={"runs": result.runs, "files": result.files})
        if progress and chosen:
            progress(result)
        if result.kept or len(chosen) < batch:
            return result


def _prune_one(run_id: str, wanted: list[str], storage: Storage, result: Pruned,
               url: str | None) -> bool:
    """Lock one run (skipped if it is no longer prunable, or another prune holds it), remove
    its files, delete it; ``False`` when its files could not all be removed."""
    with transaction(url) as conn:
        locked = conn.execute(
            select(runs.c.id).where(runs.c.id == run_id, *_prunable(wanted, result.cutoff))
            .with_for_update(skip_locked=True)  # Postgres; SQLite has one writer anyway
        ).scalar_one_or_none()
        if locked is None:
            return True
        if not _remove_files(storage, run_id, result):
            return False
        # Steps, events and artifact rows go with it (ON DELETE CASCADE; NOFX turns
        # SQLite's foreign keys on).
        conn.execute(delete(runs).where(runs.c.id == run_id))
    result.runs += 1
    return True


def _prunable(wanted: list[str], cutoff: datetime) -> tuple:
    # created_at <= ended_at, so the first condition loses nothing and lets the
    # (status, created_at) index find the candidates.
    return (runs.c.status.in_(wanted), runs.c.created_at < cutoff, runs.c.ended_at < cutoff)


def _remove_files(storage: Storage, run_id: str, result: Pruned) -> bool:
    try:
        result.files += storage.remove_prefix(f"runs/{run_id}/")
    except Exception as exc:  # the run keeps its rows; say why, and stop
        result.kept[run_id] = str(exc)
        log.error("could not remove a run's files; the run is kept", exc_info=True,
                  extra={"run_id": run_id})
        return False
    return True
