"""The database pool: idle connections are checked before use, hot ones are not; a dead
connection found by a statement sent through the driver leaves the pool."""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import create_engine, exc, text

from nofx.db import engine as engines
from tests.support.limits import soft_time_limit_in


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


def test_a_connection_just_opened_is_not_pinged_before_its_first_statement(database,
                                                                          monkeypatch):
    # given a new pool, whose checkouts ping connections that sat idle
    pool = engines._create(database)
    pings: list[object] = []
    monkeypatch.setattr(pool.dialect, "do_ping", lambda dbapi_conn: pings.append(dbapi_conn))

    # when its first connection is opened and used, then used again at once
    for _ in range(2):
        with pool.connect() as conn:
            conn.execute(text("SELECT 1"))

    # then nothing was pinged: a connection opened a moment ago is alive
    assert pings == []
    pool.dispose()


def _terminate(database: str, pids: list[int]) -> None:
    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for pid in pids:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def test_a_statement_sent_by_driver_errs_like_sqlalchemy_and_a_dead_pool_is_renewed(database):
    # given two hot pooled connections (not pinged on checkout) whose server processes are
    # gone, as after a Postgres restart
    pool = engines._create(database)
    with pool.connect() as first, pool.connect() as second:
        pids = [c.execute(text("SELECT pg_backend_pid()")).scalar() for c in (first, second)]
    _terminate(database, pids)

    # when a statement is sent through the driver, then the error is SQLAlchemy's and says
    # the connection was invalidated
    with pool.connect() as conn, pytest.raises(exc.DBAPIError) as raised:
        engines.fetch_one_by_driver(conn, "SELECT pg_backend_pid()", ())
    assert raised.value.connection_invalidated

    # and the pool's other dead connection is not handed out either: both next ones work
    with pool.connect() as a, pool.connect() as b:
        fresh = [engines.fetch_one_by_driver(c, "SELECT pg_backend_pid()", ())[0] for c in (a, b)]
    assert not set(fresh) & set(pids)
    pool.dispose()


def test_a_statement_sent_by_driver_keeps_sqlalchemy_transactions(database):
    pool = engines._create(database)
    with pool.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS driver_probe (x integer)"))
    try:
        # a write on a plain connection is in the transaction SQLAlchemy commits
        with pool.connect() as conn:
            assert engines.fetch_one_by_driver(
                conn, "INSERT INTO driver_probe VALUES (%s) RETURNING x", (7,)) == (7,)
            conn.commit()
        # a refused statement inside begin() rolls the block back, and the pool goes on
        with pytest.raises(exc.ProgrammingError) as raised, pool.begin() as conn:
            engines.fetch_one_by_driver(conn, "INSERT INTO driver_probe VALUES (%s)", (8,))
            engines.fetch_one_by_driver(conn, "SELECT no_such_column FROM driver_probe", ())
        assert not raised.value.connection_invalidated
        # and in autocommit, as the worker sends its two statements, a refused one leaves
        # the connection usable
        with pool.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(exc.ProgrammingError):
                engines.fetch_one_by_driver(conn, "SELECT no_such_column FROM pg_class", ())
            assert engines.fetch_one_by_driver(conn, "SELECT %s::int + 1", (41,)) == (42,)
        with pool.connect() as conn:
            assert conn.execute(text("SELECT array_agg(x) FROM driver_probe")).scalar() == [7]
    finally:
        with pool.begin() as conn:
            conn.execute(text("DROP TABLE driver_probe"))
        pool.dispose()


def test_a_time_limit_raised_while_the_driver_waits_comes_out_as_itself(database):
    # given a statement still running when the step's soft time limit fires (Celery raises
    # SoftTimeLimitExceeded from a signal handler, as here)
    from celery.exceptions import SoftTimeLimitExceeded

    pool = engines._create(database)
    try:
        with pool.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            # then it is not wrapped in SQLAlchemy's StatementError: the task's handler for
            # time limits still sees it
            with pytest.raises(SoftTimeLimitExceeded), soft_time_limit_in(0.2):
                engines.fetch_one_by_driver(conn, "SELECT pg_sleep(5)", ())
            conn.invalidate()  # the interrupted statement's connection is not reused
    finally:
        pool.dispose()


def test_an_idle_worker_holds_no_database_connection_after_checking_the_schema(stack_env,
                                                                              logs_dir):
    import uuid

    from tests.support.api import pg_connections
    from tests.support.procs import start_worker, wait_until

    # given a worker whose connections are named in pg_stat_activity, on its own queue
    tag = f"idle-worker-{uuid.uuid4().hex[:8]}"
    url = stack_env["NOFX_DATABASE_URL"]
    env = {**stack_env, "NOFX_QUEUE": f"{stack_env['NOFX_QUEUE']}-{tag}",
           "NOFX_DATABASE_URL": f"{url}{'&' if '?' in url else '?'}application_name={tag}"}
    worker = start_worker(tag, env, logs_dir, concurrency=1)
    try:
        # when it has started and checked the schema
        wait_until(lambda: "database schema is current" in worker.log(), timeout=30,
                   what="the worker's schema check")

        # then its main process kept no connection (it runs no steps; its pool has run none):
        # the count drops to 0 as the closed connection's server process exits, and stays
        wait_until(lambda: pg_connections(tag) == 0, timeout=5,
                   what="the worker's connections to close")
        time.sleep(0.5)
        assert pg_connections(tag) == 0
    finally:
        worker.stop()


# -- the connection a worker keeps for its step transitions ------------------------------


@pytest.fixture()
def held_url(database):
    # a URL of its own, so these tests have their own engine (and pool) in this process
    url = f"{database}{'&' if '?' in database else '?'}application_name=held-{time.time_ns()}"
    yield url
    engines.dispose_engines()


def _backend_pid(conn) -> int:
    return engines.fetch_one_by_driver(conn, "SELECT pg_backend_pid()", ())[0]


def test_a_thread_keeps_one_connection_checked_out_across_its_step_writes(held_url):
    checkouts: list[object] = []
    from sqlalchemy import event

    event.listen(engines.get_engine(held_url), "checkout", lambda *a: checkouts.append(a))
    pids = []
    for _ in range(3):
        with engines.held_connection(held_url) as conn:
            pids.append(_backend_pid(conn))
            # autocommit: each statement is its own transaction, committed as it returns
            assert engines.fetch_one_by_driver(
                conn, "SELECT current_setting('transaction_isolation')", ()) is not None
    assert len(set(pids)) == 1 and len(checkouts) == 1

    # and another thread gets a connection of its own
    import threading

    other: list[int] = []

    def _in_thread() -> None:
        with engines.held_connection(held_url) as conn:
            other.append(_backend_pid(conn))

    thread = threading.Thread(target=_in_thread)
    thread.start()
    thread.join()
    assert other and other[0] != pids[0]


def test_a_held_connection_commits_each_statement_as_it_returns(held_url, database):
    with engines.held_connection(held_url) as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS held_probe (x integer)")
        engines.fetch_one_by_driver(conn, "INSERT INTO held_probe VALUES (%s) RETURNING x", (1,))
    try:
        # seen from another connection while the first is still held: committed
        other = create_engine(database)
        with other.connect() as conn:
            assert conn.execute(text("SELECT array_agg(x) FROM held_probe")).scalar() == [1]
        other.dispose()
    finally:
        with engines.held_connection(held_url) as conn:
            conn.exec_driver_sql("DROP TABLE held_probe")


def test_a_held_connection_that_sat_idle_goes_back_and_its_dead_server_is_not_used(
        held_url, database, monkeypatch):
    # given a held connection whose server process ended while it sat idle
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_S", 0.2)
    with engines.held_connection(held_url) as conn:
        pid = _backend_pid(conn)
    _terminate(database, [pid])
    time.sleep(0.3)

    # when the thread writes again, then it does so on a live connection, not an error
    with engines.held_connection(held_url) as conn:
        assert _backend_pid(conn) != pid


def test_a_block_that_raised_gives_its_connection_back_and_the_next_one_works(held_url):
    from celery.exceptions import SoftTimeLimitExceeded

    # given a time limit that fires while a held connection's statement is running (the
    # connection made beforehand, so the limit cannot fire while connecting instead)
    with engines.held_connection(held_url) as conn:
        engines.fetch_one_by_driver(conn, "SELECT 1", ())
    with pytest.raises(SoftTimeLimitExceeded), soft_time_limit_in(0.2):
        with engines.held_connection(held_url) as conn:
            engines.fetch_one_by_driver(conn, "SELECT pg_sleep(2)", ())

    # then the next block works (the interrupted connection went back to the pool's reset)
    with engines.held_connection(held_url) as conn:
        assert engines.fetch_one_by_driver(conn, "SELECT %s::int * 2", (21,)) == (42,)


def test_a_disconnect_while_held_fails_that_statement_only(held_url, database):
    # given a held, hot connection whose server process is then terminated
    with engines.held_connection(held_url) as conn:
        pid = _backend_pid(conn)
    _terminate(database, [pid])

    # when the thread writes at once (not idle long enough to be pinged): that write fails,
    # as SQLAlchemy says a disconnect does, and the next one works on a new connection
    with pytest.raises(exc.DBAPIError) as raised, engines.held_connection(held_url) as conn:
        _backend_pid(conn)
    assert raised.value.connection_invalidated
    with engines.held_connection(held_url) as conn:
        assert _backend_pid(conn) != pid


def test_a_held_connection_goes_back_to_the_pool_after_a_while(held_url, monkeypatch):
    # so that the pool's recycling reaches it as it does every connection
    monkeypatch.setattr(engines, "HOLD_S", 0.0)
    checkins: list[object] = []
    from sqlalchemy import event

    event.listen(engines.get_engine(held_url), "checkin", lambda *a: checkins.append(a))
    for _ in range(3):
        with engines.held_connection(held_url) as conn:
            _backend_pid(conn)
    assert len(checkins) == 2  # given back before the 2nd and the 3rd block


def test_a_forked_child_does_not_use_its_parents_held_connection(held_url):
    with engines.held_connection(held_url) as conn:
        parent = _backend_pid(conn)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: drop the parent's pools and connections, as a pool process does
        try:
            engines.dispose_engines(close=False)
            with engines.held_connection(held_url) as conn:
                os.write(write, str(_backend_pid(conn)).encode())
        finally:
            os._exit(0)
    os.close(write)  # so that a child that died before writing reads as nothing, not a hang
    os.waitpid(child, 0)
    said = os.read(read, 32)
    os.close(read)
    assert said and int(said) != parent
    # and the parent's connection still works
    with engines.held_connection(held_url) as conn:
        assert _backend_pid(conn) == parent


@pytest.mark.parametrize("block", ["transaction", "autocommit"])
def test_a_time_limit_during_a_statement_in_a_block_comes_out_as_itself(held_url, block):
    # given a step's soft time limit firing while a statement of one of its blocks runs (a
    # usage event written as the model answered at the limit, say)
    from celery.exceptions import SoftTimeLimitExceeded

    # then the block raises the time limit, not the failed ROLLBACK of a connection still
    # busy with the statement (which would record "failed", not "timed_out"); the pool's
    # connection is made first, so the limit cannot fire while connecting instead
    with getattr(engines, block)(held_url) as conn:
        conn.execute(text("SELECT 1"))
    with pytest.raises(SoftTimeLimitExceeded), soft_time_limit_in(0.2):
        with getattr(engines, block)(held_url) as conn:
            conn.execute(text("SELECT pg_sleep(2)"))

    # and the pool goes on with working connections
    for _ in range(3):
        with getattr(engines, block)(held_url) as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1


def test_a_python_error_between_statements_rolls_back_and_keeps_the_connection(held_url):
    with engines.transaction(held_url) as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS rollback_probe (x integer)"))
    pid = None
    try:
        with pytest.raises(ValueError), engines.transaction(held_url) as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            conn.execute(text("INSERT INTO rollback_probe VALUES (1)"))
            raise ValueError("not the database's")
        with engines.transaction(held_url) as conn:
            assert conn.execute(text("SELECT count(*) FROM rollback_probe")).scalar() == 0
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
    finally:
        with engines.transaction(held_url) as conn:
            conn.execute(text("DROP TABLE rollback_probe"))


def test_connections_give_up_on_a_vanished_database_in_about_a_minute_not_the_kernels_timeouts(
        database):
    # given the configured database, and the same one with a setting of its own in the URL
    tuned = f"{database}?connect_timeout=3"
    for url, expected in ((database, engines.LIBPQ_DEFAULTS),
                          (tuned, {**engines.LIBPQ_DEFAULTS, "connect_timeout": 3})):
        with engines.get_engine(url).connect() as conn:
            dsn = conn.connection.dbapi_connection.info.dsn  # what libpq was given
        # then each connection carries connect, keepalive and TCP user timeouts; the URL wins
        settings = dict(part.split("=", 1) for part in dsn.split())
        assert {k: settings.get(k) for k in expected} == {k: str(v) for k, v in expected.items()}
