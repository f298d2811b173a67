"""Each process says how far its clock is from the database server's: heartbeats written
with one host's clock are judged with another's, so a skewed host must not go unnoticed."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest

from nofx.config import get_settings
from nofx.db import clock
from nofx.db.engine import get_engine
from nofx.db.migrate import upgrade


def test_a_host_in_sync_with_postgres_reads_a_skew_of_about_nothing(database):
    with get_engine(database).connect() as conn:
        skew = clock.skew_s(conn)
    assert skew is not None and abs(skew) < 0.5


@pytest.mark.parametrize("offset", [45.0, -45.0])
def test_a_host_whose_clock_is_off_reads_how_far_and_which_way(database, offset):
    with get_engine(database).connect() as conn:
        skew = clock.skew_s(conn, clock=lambda: time.time() + offset)
    assert skew == pytest.approx(offset, abs=0.5)
    problem = clock.skew_problem(skew, get_settings())
    assert problem and f"45.0s {'ahead of' if offset > 0 else 'behind'}" in problem
    assert "NOFX_STUCK_AFTER_S" in problem and "NTP" in problem


def test_sqlite_has_no_clock_of_its_own_to_compare(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    with get_engine(url).connect() as conn:
        assert clock.skew_s(conn) is None


@pytest.mark.parametrize(("stuck_after_s", "skew", "warned"), [
    (30.0, 2.9, False), (30.0, 3.1, True), (30.0, -3.1, True), (5.0, 0.9, False),
    (5.0, 1.1, True),
])
def test_the_warning_starts_at_a_tenth_of_stuck_after_and_at_least_a_second(
        stuck_after_s, skew, warned):
    settings = replace(get_settings(), stuck_after_s=stuck_after_s)
    assert (clock.skew_problem(skew, settings) is not None) is warned


def test_a_worker_starting_on_a_skewed_host_says_so_loudly(database, monkeypatch, caplog):
    from nofx.worker.app import _check_database

    monkeypatch.setattr(clock, "skew_s", lambda conn, **_: 45.0)
    with caplog.at_level(logging.INFO, logger="nofx.worker.app"):
        _check_database()
    [line] = [r for r in caplog.records if "clock" in r.getMessage()]
    assert line.levelno == logging.ERROR and "45.0s ahead of" in line.getMessage()
    assert line.clock_skew_s == 45.0  # type: ignore[attr-defined]


def test_the_detailed_health_shows_the_apis_clock_skew(client):
    database = client.get("/health/detailed").get_json()["checks"]["database"]
    assert database["ok"] and abs(database["clock_skew_s"]) < 0.5


def test_beat_says_when_its_clock_is_off_at_most_every_ten_minutes(database, monkeypatch,
                                                                    caplog):
    from nofx.worker import beat

    monkeypatch.setattr(clock, "skew_s", lambda conn, **_: -45.0)
    monkeypatch.setattr(beat, "_skew_said_at", None)
    with caplog.at_level(logging.INFO, logger="nofx.worker.beat"):
        beat.reap_once()
        beat.reap_once()
    said = [r for r in caplog.records if "clock" in r.getMessage()]
    ticks = [r for r in caplog.records if r.getMessage() == "reaper tick"]
    assert len(said) == 1 and "45.0s behind" in said[0].getMessage()
    assert [t.clock_skew_s for t in ticks] == [-45.0, -45.0]  # type: ignore[attr-defined]
