"""``/health/detailed``: every dependency, each with ok, latency and error, answered quickly."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from nofx.config import get_settings
from nofx.db.migrate import head, upgrade
from nofx.services import reaper
from tests.conftest import SESSION
from tests.support.api import settings_env
from tests.support.ops import private_redis
from tests.support.procs import start_api

CHECKS = {"database", "broker", "storage", "workers", "reaper"}


def test_detailed_health_is_200_when_every_dependency_answers(client, worker):
    # given a worker on the queue and a reaper that has just run
    reaper.reap()

    response = client.get("/health/detailed")

    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == CHECKS
    for name, check in body["checks"].items():
        assert check["ok"] is True, (name, check)
        assert check["latency_ms"] >= 0 and "error" not in check
    assert any(name.startswith(f"worker-{SESSION}@") for name in body["checks"]["workers"]["workers"])
    assert body["checks"]["workers"]["target"] == f"queue {get_settings().queue}"
    assert body["checks"]["reaper"]["last_run_age_s"] < 5
    assert body["checks"]["database"]["schema"] == head()


def test_a_database_behind_the_code_fails_the_database_check_and_says_what_to_run(
        client, tmp_path):
    # given a database two migrations behind (SQLite: the check reads alembic's revision)
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, revision="0001")
    with settings_env(NOFX_DATABASE_URL=url):
        # when health asks
        check = client.get("/health/detailed").get_json()["checks"]["database"]

    # then the database check fails and names the fix
    assert check["ok"] is False
    assert f"schema is at 0001, this NOFX needs {head()}" in check["error"]
    assert "nofx db upgrade" in check["error"]


def test_a_database_a_release_ahead_passes_the_check_as_in_a_rolling_upgrade(client, tmp_path,
                                                                             caplog):
    from sqlalchemy import create_engine, text

    from nofx.worker.app import _check_database

    # given a database migrated by a newer NOFX (a revision these migrations do not know)
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with settings_env(NOFX_DATABASE_URL=url):
        # when health asks, and a worker of this (older) version starts
        check = client.get("/health/detailed").get_json()["checks"]["database"]
        _check_database()

    # then both carry on: the old processes of a rolling upgrade keep serving
    assert check["ok"] is True and check["schema"] == "0099", check
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_with_redis_stopped_detailed_health_answers_503_within_three_seconds_naming_the_broker(
        stack_env, logs_dir):
    with private_redis(logs_dir) as (port, redis):
        # given an API whose broker is a private Redis, answering at first
        broker_url = f"redis://127.0.0.1:{port}/0"
        api, url = start_api(f"api-health-{port}", dict(stack_env, NOFX_BROKER_URL=broker_url),
                             logs_dir, workers=1)
        try:
            first = httpx.get(f"{url}/health/detailed", timeout=10).json()
            assert first["checks"]["broker"]["ok"] is True, first

            # when Redis stops
            os.kill(redis.pid, signal.SIGKILL)
            redis.wait()
            started = time.monotonic()
            response = httpx.get(f"{url}/health/detailed", timeout=10)
            elapsed = time.monotonic() - started

            # then the answer is 503, quick, and says the broker at that address is down
            broker = response.json()["checks"]["broker"]
            assert response.status_code == 503
            assert elapsed < 3, f"answered in {elapsed:.1f}s"
            assert broker["ok"] is False and broker["error"]
            assert broker["target"] == broker_url
            assert response.json()["checks"]["database"]["ok"] is True
        finally:
            api.stop()


def test_a_hanging_broker_does_not_hang_detailed_health(stack_env, logs_dir):
    with private_redis(logs_dir) as (port, redis):
        # given an API whose broker accepts connections but never answers (a frozen Redis)
        api, url = start_api(f"api-hang-{port}",
                             dict(stack_env, NOFX_BROKER_URL=f"redis://127.0.0.1:{port}/0"),
                             logs_dir, workers=1)
        try:
            os.kill(redis.pid, signal.SIGSTOP)

            # when health is asked twice (the second finds the first's checks still hanging)
            timings, answers = [], []
            for _ in range(2):
                started = time.monotonic()
                answers.append(httpx.get(f"{url}/health/detailed", timeout=10))
                timings.append(time.monotonic() - started)

            # then each answers 503 in about two seconds, the broker reported as not answering
            assert [a.status_code for a in answers] == [503, 503]
            assert max(timings) < 2.5, timings
            for answer in answers:
                broker = answer.json()["checks"]["broker"]
                assert broker["ok"] is False and "no answer" in broker["error"], broker
        finally:
            os.kill(redis.pid, signal.SIGCONT)
            api.stop()


def test_a_worker_starting_on_a_database_behind_the_code_logs_an_error(tmp_path, caplog):
    from nofx.worker.app import _check_database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, revision="0002")
    with settings_env(NOFX_DATABASE_URL=url):
        _check_database()
        upgrade(url)
        _check_database()  # at head: nothing more to say

    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        f"the database schema is at 0002, this NOFX needs {head()}: run `nofx db upgrade`; "
        "steps cannot run until then"]


def test_the_schema_revision_of_a_lost_connection_is_an_error_not_an_unmigrated_database(
        database, tmp_path):
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    from nofx.db.migrate import revision

    # given a database never migrated, and a migrated one whose connection then drops
    never = create_engine(f"sqlite:///{tmp_path / 'never.db'}")
    engine = create_engine(database)
    try:
        with never.connect() as conn:
            assert revision(conn) is None
        with engine.connect() as conn:
            assert revision(conn) == head()
            conn.rollback()
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            conn.rollback()
            with engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

            # when the revision is read over the dropped connection
            # then it fails as the database's error: not "no revision, run nofx db upgrade"
            with pytest.raises(DBAPIError):
                revision(conn)
    finally:
        engine.dispose()
        never.dispose()


# -- readiness: can this API process serve? (the database, and nothing else) ---------------


def test_ready_is_200_while_the_database_answers_whatever_else_is_down(services, monkeypatch):
    from nofx.api import create_app
    from nofx.services import health

    # given a database that answers, and every other dependency down
    def down() -> dict:
        raise ConnectionError("down on purpose")

    for name in set(health.CHECKS) - {"database"}:
        monkeypatch.setitem(health.CHECKS, name, down)
    with settings_env(NOFX_API_TOKEN="secret-token"):
        client = create_app({"TESTING": True}).test_client()
        # then readiness holds, asks no token (a kubelet probe sends none), and says no more
        response = client.get("/health/ready", environ_base={"REMOTE_ADDR": "10.1.2.3"})
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"status": "ok"}
        assert client.get("/health/detailed", headers={"Authorization": "Bearer secret-token"}
                          ).status_code == 503


def test_ready_is_503_when_the_database_does_not_answer(services):
    from nofx.api import create_app

    with settings_env(NOFX_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/none"):
        response = create_app({"TESTING": True}).test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable"}  # no address, no error text
