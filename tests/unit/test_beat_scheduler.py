"""Beat's scheduler runs the reaper's ticks itself, one at a time, and sends everything else."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.beat import ScheduleEntry

from nofx.services import reaper
from nofx.worker import beat


@pytest.fixture()
def scheduler(tmp_path: Path) -> Any:
    app = Celery("beat-test", broker="memory://")
    made = beat.Scheduler(app=app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    yield made
    made.close()


def entry(scheduler: Any, task: str) -> ScheduleEntry:
    return ScheduleEntry(name=task, task=task, schedule=10.0, app=scheduler.app)


def test_a_reaper_tick_runs_in_beat_and_a_second_waits_for_the_first(scheduler, monkeypatch,
                                                                      caplog):
    # given a reaper tick that is still running (blocked on the database, say)
    release, entered, ticks = threading.Event(), threading.Event(), []

    def slow_reap() -> dict[str, int]:
        ticks.append(threading.current_thread().name)
        entered.set()
        release.wait(10)
        return {"requeued": 0, "failed": 0, "redispatched": 0, "finished": 0, "skipped": 0}

    monkeypatch.setattr(reaper, "reap", slow_reap)
    sent: list[Any] = []
    monkeypatch.setattr(scheduler, "apply_async", lambda *a, **k: sent.append(a))
    scheduler.apply_entry(entry(scheduler, beat.REAP_TASK))
    assert entered.wait(5)

    # when the next tick comes due meanwhile
    with caplog.at_level(logging.INFO, logger="nofx.worker.beat"):
        scheduler.apply_entry(entry(scheduler, beat.REAP_TASK))
        release.set()
        scheduler._reaping.join(5)

    # then it was skipped, saying so; the first one ran in beat's reaper thread, and nothing
    # was sent to the workers
    assert ticks == ["nofx-reaper"]
    assert sent == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("previous reaper tick is still running" in m for m in messages), messages
    assert "reaper tick" in messages  # the first one's line, when it ended


def test_a_failed_tick_is_logged_and_the_next_one_runs(scheduler, monkeypatch, caplog):
    calls: list[int] = []

    def broken() -> dict[str, int]:
        calls.append(1)
        raise RuntimeError("database unreachable")

    monkeypatch.setattr(reaper, "reap", broken)
    with caplog.at_level(logging.INFO, logger="nofx.worker.beat"):
        for _ in range(2):
            scheduler.apply_entry(entry(scheduler, beat.REAP_TASK))
            scheduler._reaping.join(5)
    assert len(calls) == 2
    failed = [r for r in caplog.records if r.getMessage().startswith("reaper tick failed")]
    assert len(failed) == 2 and "database unreachable" in failed[0].exc_text


def test_any_other_entry_is_sent_as_celery_sends_it(scheduler, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(scheduler, "apply_async",
                        lambda e, producer=None, advance=False: sent.append(e.task))
    monkeypatch.setattr(reaper, "reap", lambda: pytest.fail("not a reaper entry"))

    scheduler.apply_entry(entry(scheduler, "someone.else"))

    assert sent == ["someone.else"]
    assert scheduler._reaping is None


def test_the_project_configuration_makes_beat_use_it():
    import celeryconfig

    assert celeryconfig.beat_scheduler == "nofx.worker.beat:Scheduler"
    assert {e["task"] for e in celeryconfig.beat_schedule.values()} == {beat.REAP_TASK}


def test_beat_makes_the_folder_its_schedule_lives_in(tmp_path: Path):
    # given a data folder nothing has made yet (beat on a host of its own, artifacts in S3)
    schedule = tmp_path / "not-yet" / "data" / "celerybeat-schedule"
    app = Celery("beat-test", broker="memory://")

    # when beat opens its schedule, then it can, and keeps it there
    made = beat.Scheduler(app=app, schedule_filename=str(schedule))
    try:
        assert schedule.parent.is_dir()
        assert list(schedule.parent.glob("celerybeat-schedule*"))
    finally:
        made.close()
