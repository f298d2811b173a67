"""The schema Alembic builds is the one the code describes, on Postgres and on SQLite, and
every migration can be undone and done again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from nofx.db.migrate import alembic_config, upgrade
from nofx.db.models import metadata
from nofx.status import new_id
from tests.conftest import PG_SERVER


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (migrations are not run on the session's)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'schema.db'}"
        return
    name = f"nofx_schema_{new_id()[:8]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()


def _indexes(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {ix["name"] for ix in inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_models_schema(empty_database):
    upgrade(empty_database)
    assert _differences(empty_database) == []


def test_migration_0004_drops_the_unread_indexes_and_puts_them_back(empty_database):
    upgrade(empty_database, "0003")
    assert "ix_steps_tool_status" in _indexes(empty_database, "steps")
    assert "ix_events_type" in _indexes(empty_database, "events")

    upgrade(empty_database, "0004")
    assert "ix_steps_tool_status" not in _indexes(empty_database, "steps")
    assert "ix_events_type" not in _indexes(empty_database, "events")

    command.downgrade(alembic_config(empty_database), "0003")
    assert "ix_steps_tool_status" in _indexes(empty_database, "steps")
    assert "ix_events_type" in _indexes(empty_database, "events")

    upgrade(empty_database)
    assert _differences(empty_database) == []
