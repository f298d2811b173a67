"""Retention: delete ended runs older than a cutoff, with everything they own.

Batch by batch, in one transaction each: the batch's runs are locked (a retry of one waits,
then finds it gone), their stored files (everything under ``runs/{run_id}/``, including
those of attempts that lost their step) are removed, and then the runs whose files are gone
are deleted with their steps, events and artifact rows. A run whose files could not all be
removed keeps its rows, so nothing is left that no one can find, and the prune stops there:
the store is failing. A prune stopped midway (killed, say) leaves whole runs for the next.

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
    #: Runs kept because their files could not all be removed: ``run_id: error``.
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
        with transaction(url) as conn:
            chosen = conn.execute(
                select(runs.c.id).where(*_prunable(wanted, result.cutoff))
                .order_by(runs.c.created_at).limit(batch)
                .with_for_update(skip_locked=True)  # Postgres; SQLite has one writer anyway
            ).scalars().all()
            if not chosen:
                return result
            cleared = [run_id for run_id in chosen if _remove_files(storage, run_id, result)]
            # Steps, events and artifact rows go with each run (ON DELETE CASCADE; NOFX
            # turns SQLite's foreign keys on). Guarded again, though the lock holds them.
            gone = conn.execute(
                delete(runs).where(runs.c.id.in_(cleared), *_prunable(wanted, result.cutoff))
                .returning(runs.c.id)
            ).scalars().all() if cleared else []
        result.runs += len(gone)
        log.info("pruned %d runs that ended before %s", len(gone), result.cutoff.isoformat(),
                 extra={"runs": result.runs, "files": result.files})
        if progress:
            progress(result)
        if result.kept or len(chosen) < batch:
            return result


def _prunable(wanted: list[str], cutoff: datetime) -> tuple:
    # created_at <= ended_at, so the first condition loses nothing and lets the
    # (status, created_at) index find the candidates.
    return (runs.c.status.in_(wanted), runs.c.created_at < cutoff, runs.c.ended_at < cutoff)


def _remove_files(storage: Storage, run_id: str, result: Pruned) -> bool:
    try:
        result.files += storage.remove_prefix(f"runs/{run_id}/")
    except Exception as exc:  # the run stays whole; say why, and stop after this batch
        result.kept[run_id] = str(exc)
        log.error("could not remove a run's files; the run is kept", exc_info=True,
                  extra={"run_id": run_id})
        return False
    return True
