"""The database pool: idle connections are checked before use, hot ones are not; a dead
connection found by a statement sent through the driver leaves the pool."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, exc, text

from nofx.db import engine as engines


def test_a_connection_the_server_closed_while_idle_is_replaced_not_handed_out(database,
                                                                               monkeypatch):
    # given a pooled connection that then sat idle while the server closed it
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_S", 0.2)
    pool = engines._create(database)
    with pool.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    time.sleep(0.3)

    # when it is checked out again, then it works, on a fresh server process
    with pool.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    pool.dispose()


def test_a_statement_sent_by_driver_errs_like_sqlalchemy_and_a_dead_connection_is_dropped(
        database):
    # given a hot pooled connection (not pinged on checkout) whose server process is gone
    pool = engines._create(database)
    with pool.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()

    # when a statement is sent through its driver, then the error is SQLAlchemy's, the
    # connection is invalidated, and the pool's next one works, on a fresh server process
    with pool.connect() as conn, pytest.raises(exc.DBAPIError) as raised:
        engines.fetch_one_by_driver(conn, "SELECT pg_backend_pid()", ())
    assert raised.value.connection_invalidated
    with pool.connect() as conn:
        assert engines.fetch_one_by_driver(conn, "SELECT pg_backend_pid()", ())[0] != pid

    # and a statement the server refuses is a DBAPIError on a connection that stays usable
    # (autocommit, as the hot path sends it)
    with pool.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(exc.ProgrammingError) as raised:
            engines.fetch_one_by_driver(conn, "SELECT no_such_column FROM pg_class", ())
        assert not raised.value.connection_invalidated
        assert engines.fetch_one_by_driver(conn, "SELECT %s::int + 1", (41,)) == (42,)
    pool.dispose()
