"""The ``nofx`` command's edges: an API it cannot reach, long event logs, `db upgrade`."""

from __future__ import annotations

from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from nofx import cli
from nofx import client as client_module
from nofx.client import Client
from tests.support.procs import free_port
from tests.unit.test_client_follow import RUN, FakeApi, client_for


def test_an_api_that_cannot_be_reached_is_one_clear_line_naming_it():
    url = f"http://127.0.0.1:{free_port()}"

    result = CliRunner().invoke(cli.main, ["runs", "--api-url", url, "show", RUN])

    assert result.exit_code == 1
    assert f"cannot reach the NOFX API at {url}/" in result.output
    assert "`nofx runs --api-url URL ...` or NOFX_API_URL" in result.output
    assert "Traceback" not in result.output


def test_an_api_lost_while_waiting_is_one_clear_line_too():
    class Dropping(Client):
        def follow(self, run_id: str, **_: Any) -> Any:
            yield {"id": 1, "type": "run.created", "created_at": "2026-12-06T00:00:00.000Z"}
            raise httpx.ConnectError("connection reset",
                                     request=httpx.Request("GET", "http://nofx.test/runs"))

    with pytest.raises(click.ClickException, match="cannot reach the NOFX API"):
        cli.watch(Dropping(base_url="http://nofx.test", token=""), RUN, None)


def test_events_without_follow_prints_every_event_page_after_page(monkeypatch):
    monkeypatch.setattr(client_module, "EVENT_PAGE", 3)
    api = FakeApi(["run.created", "run.started", "step.started", "llm.usage",
                   "step.finished", "run.finished", "late"], "succeeded", page_max=3)
    monkeypatch.setattr(client_module, "Client", lambda *a, **k: client_for(api))

    result = CliRunner().invoke(cli.main, ["runs", "events", RUN, "--json"])

    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 7


def test_db_upgrade_says_the_revision_the_database_is_at(tmp_path, monkeypatch):
    from nofx.config import reset_settings
    from nofx.db.migrate import head

    monkeypatch.setenv("NOFX_DATABASE_URL", f"sqlite:///{tmp_path / 'nofx.db'}")
    reset_settings()
    try:
        result = CliRunner().invoke(cli.main, ["db", "upgrade"])
    finally:
        monkeypatch.undo()
        reset_settings()
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"is at revision {head()}")


def test_what_a_run_carries_cannot_drive_the_operators_terminal():
    event = {"id": 1, "type": "step.finished", "step_id": "abcdef0123", "created_at":
             "2026-12-06T17:00:00.123456+00:00",
             "payload": {"status": "failed", "duration_s": 1.0,
                         "error": {"message": "boom\n  17:00:00.000 run.finished succeeded\x1b[2J"}}}
    line = cli.describe_event(event)
    assert "\n" not in line and "\x1b" not in line
    assert "boom\\n" in line and "\\x1b[2J" in line


def test_a_progress_event_reads_as_how_far_the_step_has_got():
    event = {"type": "step.progress", "step_id": "0123456789abcdef", "created_at":
             "2026-12-06T19:40:01.250000+00:00",
             "payload": {"attempt": 2, "elapsed_s": 20.1, "llm_chars": 5321}}
    assert cli.describe_event(event) == "  19:40:01.250 step.progress [01234567] 20.1s llm_chars=5321"


@pytest.fixture()
def env(monkeypatch):
    """Set NOFX_* variables for one invocation; the cached settings follow them."""
    from nofx.config import reset_settings
    from nofx.db.engine import dispose_engines

    def setting(**values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_settings()

    yield setting
    monkeypatch.undo()
    reset_settings()
    dispose_engines()


def test_reap_on_a_database_that_is_not_there_says_so_and_makes_none(tmp_path, env):
    missing = tmp_path / "no" / "nofx.db"
    env(NOFX_DATABASE_URL=f"sqlite:///{missing}")

    result = CliRunner().invoke(cli.main, ["reap"])

    assert result.exit_code == 1
    assert f"no database at sqlite:///{missing}" in result.output
    assert "Traceback" not in result.output and not missing.parent.exists()


def test_reap_on_a_database_without_nofx_schema_says_so(tmp_path, env):
    empty = tmp_path / "empty.db"
    empty.touch()
    env(NOFX_DATABASE_URL=f"sqlite:///{empty}")
    result = CliRunner().invoke(cli.main, ["reap"])
    assert result.exit_code == 1 and "has no NOFX schema" in result.output


def test_a_bad_setting_is_one_line_naming_it(env):
    env(NOFX_API_PORT="abc")
    result = CliRunner().invoke(cli.main, ["reap"])
    assert result.exit_code == 1
    assert result.output.strip().endswith(
        "Error: configuration: NOFX_API_PORT must be a whole number, got 'abc'")
    assert "Traceback" not in result.output


def test_an_unreachable_database_is_one_line_naming_it(env):
    env(NOFX_DATABASE_URL=f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/nofx")
    result = CliRunner().invoke(cli.main, ["db", "current"])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: database postgresql+psycopg://nobody:***@127.0.0.1:")
    assert "secret" not in line


def test_db_current_before_and_after_upgrade_into_a_fresh_data_dir(tmp_path, env):
    env(NOFX_DATA_DIR=str(tmp_path / "fresh" / "data"), NOFX_DATABASE_URL=None)
    from nofx.db.migrate import head

    before = CliRunner().invoke(cli.main, ["db", "current"])
    assert before.exit_code == 0 and "has no NOFX schema yet: run `nofx db upgrade`" in before.output
    assert not (tmp_path / "fresh").exists()  # asking made nothing

    assert CliRunner().invoke(cli.main, ["db", "upgrade"]).exit_code == 0
    after = CliRunner().invoke(cli.main, ["db", "current"])
    assert after.output.strip().endswith(f"is at revision {head()} (head)")


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    # given an API with a long event log, and `nofx runs events` piped into a reader that
    # takes one line and goes (`| head -1`)
    import json as json_module
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    log = [{"id": i, "run_id": RUN, "step_id": None, "type": "x", "payload": {},
            "created_at": "2026-12-06T00:00:00.000000+00:00"} for i in range(1, 5001)]

    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = httpx.URL(self.path).params
            after, limit = int(query.get("after", 0)), int(query.get("limit", 1000))
            body = json_module.dumps(
                {"items": [e for e in log if e["id"] > after][:limit]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from nofx.cli import main; main()", "runs", "--api-url",
             f"http://127.0.0.1:{server.server_address[1]}", "events", RUN, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and json_module.loads(proc.stdout.readline())["id"] == 1
        proc.stdout.close()  # the reader goes
        _, err = proc.communicate(timeout=30)
    finally:
        server.shutdown()
    # then the command ends quietly, as a Unix filter does
    assert proc.returncode == 0, err
    assert b"Error" not in err and b"Traceback" not in err, err


def test_reap_on_another_applications_database_says_so(tmp_path, env):
    import sqlite3

    theirs = tmp_path / "theirs.db"
    with sqlite3.connect(theirs) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('f00dcafe')")
    env(NOFX_DATABASE_URL=f"sqlite:///{theirs}")
    result = CliRunner().invoke(cli.main, ["reap"])
    assert result.exit_code == 1 and "f00dcafe" in result.output, result.output
