"""The database pool: idle connections are checked before use, hot ones are not."""

from __future__ import annotations

import time

from sqlalchemy import create_engine, text

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
