"""Retention: delete ended runs older than a cutoff, with everything they own.

A run's steps, events and artifact rows go with it in one transaction per batch; its stored
files (everything under ``runs/{run_id}/``, including those of attempts that lost their
step) are removed once that transaction has committed. The delete is guarded: a run that is
no longer ended, or ended later than the cutoff (retried meanwhile, say), is left alone, so
``nofx prune`` can run beside the API and the workers.

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
    #: Runs whose files could not all be removed (their rows are gone): ``run_id: error``.
    files_left: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"cutoff": self.cutoff.isoformat(), "runs": self.runs, "files": self.files,
                "files_left": self.files_left, "dry_run": self.dry_run}


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
            ).scalars().all()
            if not chosen:
                return result
            # Guarded again as it deletes: a run retried since it was chosen is kept. Its
            # steps, events and artifact rows go with it (ON DELETE CASCADE; NOFX turns
            # SQLite's foreign keys on).
            gone = conn.execute(
                delete(runs).where(runs.c.id.in_(chosen), *_prunable(wanted, result.cutoff))
                .returning(runs.c.id)
            ).scalars().all()
        result.runs += len(gone)
        for run_id in gone:
            _remove_files(storage, run_id, result)
        log.info("pruned %d runs that ended before %s", len(gone), result.cutoff.isoformat(),
                 extra={"runs": result.runs, "files": result.files})
        if progress:
            progress(result)
        if len(chosen) < batch:
            return result


def _prunable(wanted: list[str], cutoff: datetime) -> tuple:
    # created_at <= ended_at, so the first condition loses nothing and lets the
    # (status, created_at) index find the candidates.
    return (runs.c.status.in_(wanted), runs.c.created_at < cutoff, runs.c.ended_at < cutoff)


def _remove_files(storage: Storage, run_id: str, result: Pruned) -> None:
    try:
        result.files += storage.remove_prefix(f"runs/{run_id}/")
    except Exception as exc:  # the rows are gone; say which files are left, and go on
        result.files_left[run_id] = str(exc)
        log.warning("could not remove a pruned run's files", exc_info=True,
                    extra={"run_id": run_id})
