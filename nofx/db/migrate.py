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


def behind(conn: Connection) -> str | None:
    """Why the connected database's schema is not the one this code needs, or ``None``."""
    try:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        revision = None
    if revision == head():
        return None
    return (f"the database schema is at {revision or 'no revision'}, this NOFX needs "
            f"{head()}: run `nofx db upgrade`")


def current(url: str | None = None) -> None:
    """Print the schema's current revision."""
    command.current(alembic_config(url), verbose=False)
