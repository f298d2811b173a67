"""``nofx prune``: ended runs older than the cutoff go, with their steps, events, artifact rows
and stored files; every other run, and everything it owns, stays. On Postgres and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update

from nofx import status
from nofx.db.engine import get_engine
from nofx.db.migrate import upgrade
from nofx.db.models import artifacts, events, runs, steps
from nofx.errors import NotFound
from nofx.services.retention import prune
from nofx.storage.base import Storage, artifact_key
from nofx.storage.filesystem import FileStorage

DAY = timedelta(days=1)
OWNED = (steps, events, artifacts)


@pytest.fixture(params=["postgresql", "sqlite"])
def place(request, tmp_path) -> Iterator[tuple[str, Storage]]:
    """A database and an artifact store: the session's Postgres and S3, or a fresh SQLite
    file and folder."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'prune.db'}"
        upgrade(url)
        yield url, FileStorage(tmp_path / "artifacts")
        return
    from nofx.adapters import storage

    url = request.getfixturevalue("services")["database"]
    MADE.clear()
    store = storage()
    yield url, store
    forget(url, store, MADE)


#: Runs a test made in the session's database: left there, old and ended, they would be
#: pruned by the next test and counted in its figures.
MADE: list[str] = []


def forget(url: str, store: Storage, run_ids: list[str]) -> None:
    with get_engine(url).begin() as conn:
        for table in (*OWNED, runs):
            column = table.c.id if table is runs else table.c.run_id
            conn.execute(delete(table).where(column.in_(run_ids)))
    for run_id in run_ids:
        store.remove_prefix(f"runs/{run_id}/")


def make_run(url: str, store: Storage, run_status: str, ended_days_ago: float | None,
             created_days_ago: float = 41) -> tuple[str, str]:
    """A one-step run in ``run_status``, made and (if given) ended so many days ago, with an
    event, an artifact row and its stored bytes; returns its id and the artifact's key."""
    run_id, step_id = status.new_id(), status.new_id()
    MADE.append(run_id)
    now = status.now()
    with get_engine(url).begin() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={"goal": "g"}, step_rows=[{
            "id": step_id, "index": 0, "name": "s", "tool": "echo", "inputs": {},
            "max_attempts": 3, "timeout_s": 30.0}], dispatched=True)
        key = artifact_key(run_id, step_id, 1, "out.txt")
        stored = store.put(key, b"bytes of " + run_id.encode(), "text/plain")
        conn.execute(insert(artifacts).values(
            id=status.new_id(), run_id=run_id, step_id=step_id, name="out.txt",
            content_type="text/plain", size=stored.size, sha256=stored.sha256,
            storage_key=key, created_at=now))
        ended = None if ended_days_ago is None else now - ended_days_ago * DAY
        step_status = {"succeeded": "succeeded", "failed": "failed",
                       "cancelled": "cancelled"}.get(run_status, run_status)
        conn.execute(update(steps).where(steps.c.id == step_id).values(
            status=step_status, attempt=1, ended_at=ended))
        conn.execute(update(runs).where(runs.c.id == run_id).values(
            status=run_status, created_at=now - created_days_ago * DAY, ended_at=ended))
    # An earlier attempt's file that lost its step: no row, but under the run's folder too.
    store.put(artifact_key(run_id, step_id, 0, "stale.txt"), b"old", "text/plain")
    return run_id, key


def rows_of(url: str, run_id: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        counted = {t.name: conn.execute(select(func.count()).select_from(t)
                                        .where(t.c.run_id == run_id)).scalar_one()
                   for t in OWNED}
        counted["runs"] = conn.execute(select(func.count()).select_from(runs)
                                       .where(runs.c.id == run_id)).scalar_one()
    return counted


def stored(store: Storage, key: str) -> bool:
    try:
        store.get(key)
        return True
    except NotFound:
        return False


def test_old_ended_runs_go_with_all_they_own_and_every_other_run_stays(place):
    url, store = place
    # given three runs that ended 40 days ago (one of each ended status); and, made 41 days
    # ago, one that ended yesterday (retried, say) and one still running; and a new one
    old = [make_run(url, store, s, ended_days_ago=40)
           for s in ("succeeded", "failed", "cancelled")]
    kept = [make_run(url, store, "succeeded", ended_days_ago=1),
            make_run(url, store, "running", ended_days_ago=None),
            make_run(url, store, "succeeded", ended_days_ago=0, created_days_ago=0)]

    # when runs that ended more than 30 days ago are pruned
    done = prune(timedelta(days=30), url=url, storage=store)

    # then the three old ones are gone, rows and files (a lost attempt's file too) ...
    assert done.runs == 3 and done.files == 6 and not done.kept
    for run_id, key in old:
        assert rows_of(url, run_id) == {"steps": 0, "events": 0, "artifacts": 0, "runs": 0}
        assert not stored(store, key)
        assert not stored(store, key.replace("/1/out.txt", "/0/stale.txt"))
    # ... and the others keep everything
    for run_id, key in kept:
        assert rows_of(url, run_id) == {"steps": 1, "events": 1, "artifacts": 1, "runs": 1}
        assert stored(store, key)


def test_a_dry_run_counts_and_changes_nothing(place):
    url, store = place
    made = [make_run(url, store, "failed", ended_days_ago=40) for _ in range(2)]

    done = prune(timedelta(days=30), url=url, storage=store, dry_run=True)

    assert (done.runs, done.files, done.dry_run) == (2, 0, True)
    for run_id, key in made:
        assert rows_of(url, run_id)["runs"] == 1 and stored(store, key)


def test_only_the_statuses_asked_for_go_in_batches_with_progress(place):
    url, store = place
    failed = [make_run(url, store, "failed", ended_days_ago=40) for _ in range(3)]
    succeeded = make_run(url, store, "succeeded", ended_days_ago=40)
    seen: list[int] = []

    done = prune(timedelta(days=30), ["failed"], url=url, storage=store, batch=2,
                 progress=lambda p: seen.append(p.runs))

    assert done.runs == 3 and seen == [2, 3]
    assert all(rows_of(url, run_id)["runs"] == 0 for run_id, _ in failed)
    assert rows_of(url, succeeded[0])["runs"] == 1


def test_running_or_queued_runs_cannot_be_asked_for(place):
    url, store = place
    with pytest.raises(ValueError, match="only ended runs"):
        prune(timedelta(days=30), ["running", "queued"], url=url, storage=store)


def test_a_store_that_fails_keeps_the_run_and_stops_the_prune_at_once(place):
    # given two old runs, and a store that cannot remove the first one's files
    url, store = place
    first, second = (make_run(url, store, "succeeded", ended_days_ago=40, created_days_ago=c)
                     for c in (42, 41))
    asked: list[str] = []

    class Failing:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def remove_prefix(self, prefix: str) -> int:
            asked.append(prefix)
            raise OSError("the store is down")

    done = prune(timedelta(days=30), url=url, storage=Failing())  # type: ignore[arg-type]

    # then the first run keeps its rows, the prune says why and goes no further (a failing
    # store is not asked about every other run), and a later prune takes both
    assert (done.runs, done.files) == (0, 0)
    assert "the store is down" in done.kept[first[0]]
    assert asked == [f"runs/{first[0]}/"]
    assert rows_of(url, first[0])["runs"] == 1 and rows_of(url, second[0])["runs"] == 1
    assert stored(store, second[1])
    assert prune(timedelta(days=30), url=url, storage=store).runs == 2


def test_a_retry_of_a_run_being_pruned_waits_then_finds_it_gone(services):
    # given an old failed run (Postgres: SQLite has one writer, so there a retry waits for
    # the prune's whole transaction), and a prune held up while it removes the run's files
    import threading

    from nofx.adapters import storage
    from nofx.services import runs as run_service

    url, store = services["database"], storage()
    run_id, _ = make_run(url, store, "failed", ended_days_ago=40)
    removing, release = threading.Event(), threading.Event()

    class Slow:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def remove_prefix(self, prefix: str) -> int:
            removing.set()
            assert release.wait(10)
            return store.remove_prefix(prefix)

    pruning = threading.Thread(target=lambda: prune(timedelta(days=30), url=url, storage=Slow()))
    pruning.start()
    assert removing.wait(10)

    # when the run is retried meanwhile
    retried: list[Any] = []
    retry = threading.Thread(target=lambda: retried.append(_outcome(run_service.resume_run, run_id)))
    retry.start()
    retry.join(1.0)
    # then the retry waits for the prune (the run is locked) ...
    assert retry.is_alive() and not retried
    release.set()
    pruning.join(10)
    retry.join(10)
    # ... and then finds no run: nothing half-deleted was resumed
    assert retried == ["NotFound"]
    assert rows_of(url, run_id) == {"steps": 0, "events": 0, "artifacts": 0, "runs": 0}


def _outcome(fn: Any, *args: Any) -> str:
    try:
        fn(*args)
        return "done"
    except Exception as exc:  # the test reads which
        return type(exc).__name__


def test_the_file_store_refuses_a_prefix_outside_it(tmp_path: Path):
    from nofx.errors import StorageError

    store = FileStorage(tmp_path / "artifacts")
    with pytest.raises(StorageError, match="escapes"):
        store.remove_prefix("runs/../../etc/")


# -- the command -------------------------------------------------------------------------


@pytest.fixture()
def here(tmp_path, monkeypatch) -> Iterator[tuple[str, Storage]]:
    """NOFX configured, for the command, on a fresh SQLite file and artifact folder."""
    from nofx.config import reset_settings
    from nofx.db.engine import dispose_engines

    url = f"sqlite:///{tmp_path / 'nofx.db'}"
    upgrade(url)
    monkeypatch.setenv("NOFX_DATABASE_URL", url)
    monkeypatch.setenv("NOFX_STORAGE_URL", (tmp_path / "artifacts").as_uri())
    reset_settings()
    yield url, FileStorage(tmp_path / "artifacts")
    monkeypatch.undo()
    reset_settings()
    dispose_engines()


def nofx(*args: str) -> Any:
    from click.testing import CliRunner

    from nofx import cli

    return CliRunner().invoke(cli.main, ["prune", *args])


@pytest.mark.parametrize(("args", "says"), [
    ((), "Missing option '--older-than'"),
    (("--older-than", "30x"), "'30x' is not an age: write it as 30d, 12h, 90m or 3600s"),
    (("--older-than", "0d"), "'0d' is not an age"),
    (("--older-than", "6M"), "'6M' is not an age"),
    (("--older-than", "1e12d"), "'1e12d' is not an age"),
    (("--older-than", "900000d"), "at most 100 years"),
    (("--older-than", "30d", "--status", "running"), "'running' is not one of"),
])
def test_the_command_needs_an_age_and_ended_statuses(here, args, says):
    result = nofx(*args)
    assert result.exit_code == 2 and says in result.output, result.output


def test_the_command_prunes_showing_progress_and_what_it_did(here):
    url, store = here
    made = [make_run(url, store, "failed", ended_days_ago=40) for _ in range(3)]
    kept = make_run(url, store, "succeeded", ended_days_ago=40)

    dry = nofx("--older-than", "30d", "--status", "failed", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert '"runs": 3' in dry.output and '"dry_run": true' in dry.output
    assert all(rows_of(url, run_id)["runs"] == 1 for run_id, _ in made)

    done = nofx("--older-than", "720h", "--status", "failed", "--batch", "2")
    assert done.exit_code == 0, done.output
    assert "pruned 2 runs (4 files) so far" in done.output
    assert "pruned 3 runs (6 files) so far" in done.output
    assert done.output.strip().splitlines()[-1].startswith('{"cutoff": ')
    assert all(rows_of(url, run_id)["runs"] == 0 for run_id, _ in made)
    assert rows_of(url, kept[0])["runs"] == 1


def test_the_command_stops_and_fails_when_the_store_cannot_remove_a_runs_files(
        here, monkeypatch):
    url, store = here
    run_id, key = make_run(url, store, "failed", ended_days_ago=40)

    def down(self: FileStorage, prefix: str) -> int:
        raise OSError("disk gone")

    monkeypatch.setattr(FileStorage, "remove_prefix", down)
    result = nofx("--older-than", "30d")

    assert result.exit_code == 1
    assert f"the files of run {run_id} could not all be removed, so the run is kept" in (
        result.output)
    assert "disk gone" in result.output and rows_of(url, run_id)["runs"] == 1


def test_the_command_refuses_a_database_that_is_not_there(tmp_path, monkeypatch):
    from nofx.config import reset_settings

    missing = tmp_path / "nowhere" / "nofx.db"
    monkeypatch.setenv("NOFX_DATABASE_URL", f"sqlite:///{missing}")
    reset_settings()
    try:
        result = nofx("--older-than", "30d")
    finally:
        monkeypatch.undo()
        reset_settings()
    assert result.exit_code == 1 and "no database at" in result.output
    assert not missing.parent.exists()
