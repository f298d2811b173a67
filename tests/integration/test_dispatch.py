"""Sending a new run's chain: the run is written once, marked dispatched in that write, and
left for the reaper's fast path (``never_dispatched``) when the broker refuses the chain."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.exceptions import OperationalError as BrokerDown
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError as DatabaseDown

from nofx import status
from nofx.db.engine import get_engine, transaction
from nofx.db.models import runs
from nofx.services import dispatch
from tests.support.runs import plan, step, submit


@pytest.fixture()
def forget() -> Iterator[list[str]]:
    """Runs to delete after the test: never sent, they must not wait for the session's
    reaper (other tests wait for every dispatched run to end)."""
    ids: list[str] = []
    yield ids
    with transaction() as conn:
        conn.execute(runs.delete().where(runs.c.id.in_(ids)))


def dispatched_at(run_id: str) -> Any:
    with transaction() as conn:
        return conn.execute(select(runs.c.dispatched_at).where(runs.c.id == run_id)).scalar_one()


@pytest.fixture()
def statements(database: str) -> Iterator[list[str]]:
    """Every statement this process sends to Postgres while the test runs."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


@pytest.fixture()
def broker_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chain the API sends fails as it would with the broker down."""

    class Refused:
        def __init__(self, *links: Any) -> None:
            pass

        def apply_async(self, **options: Any) -> None:
            raise BrokerDown("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(dispatch, "chain", Refused)


def test_a_new_run_is_stored_and_marked_dispatched_in_one_statement(client, statements):
    # when a plan is submitted with the broker answering
    run = submit(client, plan(step("hello", "echo", say="hi")))

    # then the API wrote it with one statement (run, steps, event, counters, dispatched_at)
    assert len(statements) == 1, statements
    assert statements[0].lstrip().startswith("WITH run AS")
    # and the run counts as dispatched, so the reaper's fast path leaves it alone
    assert dispatched_at(run["id"]) is not None


def test_a_run_the_broker_refused_is_stored_undispatched_for_the_reaper(
    client, broker_refuses, caplog, forget
):
    # when a plan is submitted and the broker refuses its chain
    with caplog.at_level(logging.WARNING, logger="nofx.services.dispatch"):
        run = submit(client, plan(step("hello", "echo", say="hi")))
    forget.append(run["id"])

    # then the run is kept, queued, and marked as never dispatched (the reaper sends it
    # on its next tick once the broker answers: the reliability suite runs that story)
    assert run["status"] == "queued"
    assert dispatched_at(run["id"]) is None
    warned = [r for r in caplog.records if getattr(r, "run_id", None) == run["id"]]
    assert warned and "reaper will send it" in warned[0].getMessage()


def test_when_neither_broker_nor_database_answers_after_the_write_the_run_is_kept(
    client, broker_refuses, monkeypatch, caplog, forget
):
    # given a database that fails every write after the run's own
    def fails(conn: Any, run_id: str, dispatched: bool = True) -> bool:
        raise DatabaseDown("UPDATE runs ...", {}, Exception("server closed the connection"))

    monkeypatch.setattr(status, "mark_dispatched", fails)

    # when a plan is submitted and the broker refuses its chain
    with caplog.at_level(logging.WARNING, logger="nofx.services.dispatch"):
        run = submit(client, plan(step("hello", "echo", say="hi")))
    forget.append(run["id"])

    # then the client still gets its run (it is stored), and the log says, with the run's
    # id, that the reaper sends it once it is overdue
    assert run["status"] == "queued"
    assert dispatched_at(run["id"]) is not None
    warned = [r.getMessage() for r in caplog.records if getattr(r, "run_id", None) == run["id"]]
    assert any("overdue" in message for message in warned), warned
