"""Database engines: one pool per process, built on first use, never at import."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str | None = None) -> Engine:
    """The engine for ``url`` (default: the configured database), created once per process."""
    if url is None:
        from nofx.config import get_settings

        url = get_settings().database_url
    with _lock:
        if url not in _engines:
            _engines[url] = _create(url)
        return _engines[url]


def _create(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite(url)
    # Sized for a gunicorn worker or a prefork child; recycled so a proxy that drops idle
    # connections never hands us a dead one.
    engine = create_engine(url, pool_size=5, max_overflow=5, pool_recycle=1800, pool_timeout=10,
                           connect_args=connect_args(url))
    _ping_when_idle(engine)
    return engine


#: libpq settings so a database that vanishes from the network (a failover, a dropped
#: route: no reset, no answer) fails a connection in about a minute instead of hanging it
#: for the kernel's TCP timeouts (15 min and more): the reaper's tick and a step's heartbeat
#: thread would hang with it. A URL's own query parameters win.
LIBPQ_DEFAULTS = {
    "connect_timeout": 10,
    "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # ms: sent data unacknowledged this long fails the connection
}


def connect_args(url: str) -> dict[str, Any]:
    """The driver settings for ``url``: :data:`LIBPQ_DEFAULTS` less what the URL sets."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    return {k: v for k, v in LIBPQ_DEFAULTS.items() if k not in parsed.query}


#: A connection used this recently is taken to be alive; one idle longer is pinged first.
PING_AFTER_IDLE_S = 10.0

#: The database is down, unreachable, lost the connection mid-statement, or the pool had no
#: connection free in time: worth trying again later, unlike a bug (bad SQL, bad data).
UNAVAILABLE: tuple[type[Exception], ...] = (
    exc.OperationalError, exc.InterfaceError, exc.TimeoutError)


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for connections that sat idle (a worker's hot path skips it).

    A ping on every checkout costs a round trip per transaction (two per step). After a
    Postgres restart, a connection used within the last few seconds fails its first
    statement instead; that transaction errors and is retried by whoever owns it (the API
    client; for a step, its task once, then the reaper: nofx/worker/tasks.py).
    """

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        # (on connect too: a connection opened a moment ago needs no ping before its use).
        # A connection held out of the pool (held_connection) has been idle since its last
        # use, not since it came back: its next checkout pings it if that was long ago.
        record.info["checked_in_at"] = record.info.pop("used_at", None) or time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("checked_in_at", 0.0) < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as error:  # the pool replaces the connection and checks out again
            raise exc.DisconnectionError("connection was closed while idle") from error


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (``None``: not SQLite, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _create_sqlite(url: str) -> Engine:
    if (path := sqlite_file(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below); pysqlite's implicit BEGIN is deferred,
        # which lets two writers deadlock instead of waiting for each other.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def transaction(url: str | None = None) -> Iterator[Connection]:
    """One database transaction: committed when the block ends, rolled back if it raises."""
    with get_engine(url).connect() as conn, conn.begin(), _not_reused_if_cut_short(conn):
        yield conn


@contextmanager
def autocommit(url: str | None = None) -> Iterator[Connection]:
    """A connection on which each statement is its own transaction (no BEGIN, no COMMIT).

    Only for work that needs no transaction: one statement (a Postgres function call, say,
    which runs atomically in one round trip where ``transaction()`` costs three), or reads.
    On SQLite (one local file, no round trips) it is simply a transaction.
    """
    engine = get_engine(url)
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn, _not_reused_if_cut_short(conn):
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def _not_reused_if_cut_short(conn: Connection) -> Iterator[None]:
    """Invalidate ``conn`` when the block raised while its driver was still in a statement.

    Celery raises a step's soft time limit from a signal handler, wherever the task is: if
    that is while psycopg waits for the server, the connection is left mid-statement, and
    rolling it back (what ending the block does) fails with "another command is already in
    progress", which would replace the time limit with a database error (and a step that
    timed out would be recorded as failed). An invalidated connection is closed instead,
    and the server ends the statement and its transaction.
    """
    try:
        yield
    except BaseException as error:
        if not isinstance(error, exc.DBAPIError) and _cut_short(conn):
            conn.invalidate()
        raise


def _cut_short(conn: Connection) -> bool:
    """Whether ``conn``'s driver is still in the middle of a statement."""
    if conn.closed or conn.invalidated:
        return False
    info = getattr(conn.connection.dbapi_connection, "info", None)  # psycopg's; not sqlite3's
    status = getattr(info, "transaction_status", None)
    return getattr(status, "name", None) == "ACTIVE"


#: How long a thread keeps a held connection out of the pool before giving it back once, so
#: that the pool's recycling (``pool_recycle``) reaches it as it reaches every connection.
HOLD_S = 60.0

_held = threading.local()


@contextmanager
def held_connection(url: str | None = None) -> Iterator[Connection]:
    """An autocommit connection this thread keeps checked out between uses.

    For a worker's step transitions (a claim and a success a step, one statement each):
    checking a pooled connection out and back in around each cost a chain ~0.4 ms a step on
    the benchmark machine (docs/benchmarks.md). The connection goes back to the pool, and
    the next use checks one out afresh, when it sat idle longer than ``PING_AFTER_IDLE_S``
    (the checkout then pings it, as it pings any idle connection), when it was held for
    ``HOLD_S``, when it was invalidated, and when a block raised (invalidated if that cut
    a statement short: see ``_not_reused_if_cut_short``). Postgres only: each statement must
    be its own transaction (``autocommit``), which only ``nofx.status``'s one-statement path
    is.
    """
    engine = get_engine(url)
    held: dict[Engine, tuple[Connection, float]] = _held.__dict__.setdefault("connections", {})
    now = time.monotonic()
    entry = held.get(engine)
    if entry is not None:
        conn, taken_at = entry
        if (conn.closed or conn.invalidated or now - taken_at > HOLD_S
                or now - conn.info.get("used_at", now) > PING_AFTER_IDLE_S):
            del held[engine]
            if not conn.closed:
                conn.close()
            entry = None
    if entry is None:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        entry = held[engine] = (conn, now)
    conn = entry[0]
    try:
        with _not_reused_if_cut_short(conn):
            yield conn
    except BaseException:
        held.pop(engine, None)
        conn.close()
        raise
    if conn.in_transaction():  # SQLAlchemy's own begin(); nothing is sent in autocommit
        conn.rollback()
    if not conn.invalidated:
        conn.info["used_at"] = time.monotonic()


def fetch_one_by_driver(conn: Connection, sql: str, params: tuple[Any, ...]) -> Any:
    """Send ``sql`` (``%s`` placeholders) straight through ``conn``'s driver; its first row.

    For the few fixed statements on a worker's hot path (a step's claim and success), whose
    one row is read by position: SQLAlchemy's execution context and result set up cost as
    much client time as the driver itself there (docs/benchmarks.md). Everything else stays
    SQLAlchemy's: the pooled connection in whatever mode it is in (autocommit, or a
    transaction, begun here as ``conn.execute`` would have begun it), and what happens on an
    error, which goes through the connection's own handler: wrapped in a ``DBAPIError``,
    ``handle_error`` hooks run, and on a disconnect the connection and the pool's older
    connections are invalidated.
    """
    if conn.get_transaction() is None:
        conn.begin()  # what conn.execute does first (a no-op on the wire)
    dbapi = conn.connection.dbapi_connection
    cursor = None
    try:
        cursor = dbapi.cursor()  # type: ignore[union-attr]
        cursor.execute(sql, params)
        row = cursor.fetchone()
        cursor.close()
        return row
    except BaseException as error:
        if isinstance(error, Exception) and not isinstance(error, conn.dialect.loaded_dbapi.Error):
            # Not the database's: e.g. Celery's SoftTimeLimitExceeded raised by a signal
            # while waiting. conn.execute lets those through unwrapped; so does this.
            if cursor is not None:
                cursor.close()
            raise
        # The driver's errors and exit exceptions: SQLAlchemy's own handling of a failed
        # statement (the call conn.execute makes; private, unchanged from 1.4 to 2.1;
        # tests/integration/test_db_pool.py holds what it does).
        conn._handle_dbapi_exception(error, sql, params, cursor, None)


#: Reads need no transaction on Postgres: at READ COMMITTED each statement sees what was
#: committed when it began, inside a transaction or not, and BEGIN and COMMIT would cost a
#: round trip each. On SQLite a read is a transaction (one file, no round trips).
reading = autocommit


def dispose_engines(close: bool = True) -> None:
    """Drop every pool: on shutdown (``close``), and in a forked child (``close=False``: the
    connections are the parent's; closing them here would end them for the parent too)."""
    global _held
    connections = _held.__dict__.get("connections", {})
    _held = threading.local()
    if close:  # this thread's held connections (a forked child's are its parent's: dropped)
        for conn, _ in connections.values():
            conn.close()
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=close)
        _engines.clear()
