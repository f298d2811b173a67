"""Schema migrations with Alembic, driven from code (``nofx db upgrade``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at NOFX's migrations and ``url`` (default: configured DB)."""
    from nofx.config import get_settings

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


@lru_cache(maxsize=1)
def head() -> str:
    """The newest revision this NOFX's migrations know."""
    return str(ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head())


def revision(conn: Connection) -> str | None:
    """The connected database's schema revision (``None``: never migrated)."""
    try:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None


def behind(conn: Connection) -> str | None:
    """Why the connected database's schema is older than this code needs, or ``None``.

    A revision these migrations do not know comes from a newer NOFX that has already
    migrated: what happens during a rolling upgrade, when the old processes still run on
    the new schema (each migration keeps the previous release working; docs/scaling.md).
    That is not a problem for this process, so it is not reported as one.
    """
    found = revision(conn)
    if found == head() or (found is not None and not _known(found)):
        return None
    return (f"the database schema is at {found or 'no revision'}, this NOFX needs "
            f"{head()}: run `nofx db upgrade`")


def _known(rev: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(rev) is not None
    except Exception:  # alembic: "No such revision or branch"
        return False


def current(url: str | None = None) -> None:
    """Print the schema's current revision."""
    command.current(alembic_config(url), verbose=False)
