"""Schema migrations with Alembic, driven from code (``nofx db upgrade``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at NOFX's migrations and ``url`` (default: configured DB)."""
    from nofx.config import get_settings

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (a SQLite file's folder is made if need be)."""
    from nofx.config import get_settings
    from nofx.db.engine import sqlite_file

    # (Alembic's env.py makes its own engine, so not the folder get_engine would make.)
    if (path := sqlite_file(url or get_settings().database_url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


@lru_cache(maxsize=1)
def head() -> str:
    """The newest revision this NOFX's migrations know."""
    return str(ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head())


def revision(conn: Connection) -> str | None:
    """The connected database's schema revision (``None``: never migrated; several rows,
    which NOFX's linear history never writes, come back joined by commas).

    A database that cannot answer raises its error: that is not a database to migrate.
    """
    if not inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return ",".join(sorted(found)) or None


def schema_problem(found: str | None) -> str | None:
    """Why schema revision ``found`` does not serve this code, or ``None``.

    NOFX's revisions are numbered in order (0001, 0002, ...). A higher number than this
    code's head comes from a newer NOFX that has already migrated: what happens during a
    rolling upgrade, when the old processes still run on the new schema (each migration
    keeps the previous release working; docs/scaling.md), so it is fine. A lower one is
    behind; anything else is not NOFX's.
    """
    latest = head()
    if found == latest or (found and found.isdigit() and int(found) > int(latest)):
        return None
    if found and not found.isdigit():
        return (f"the database schema is at {found!r}, which is not a NOFX revision; "
                f"this NOFX needs {latest}")
    return (f"the database schema is at {found or 'no revision'}, this NOFX needs "
            f"{latest}: run `nofx db upgrade`")


def current(url: str | None = None) -> None:
    """Print the schema's current revision."""
    command.current(alembic_config(url), verbose=False)
