"""Helpers for tests of the HTTP API itself: tokens, event streams, database connections."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool


def new_token() -> str:
    """A fresh bearer token, unique to the test."""
    return f"test-token-{uuid.uuid4().hex}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def settings_env(**env: str) -> Iterator[None]:
    """Settings read with ``env`` added; the cached settings are forgotten on the way in and out."""
    from nofx.config import reset_settings

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        reset_settings()
        try:
            yield
        finally:
            patch.undo()
            reset_settings()


def app_with_tokens(*tokens: str) -> Any:
    """A Flask app built while ``NOFX_API_TOKEN`` lists ``tokens`` (the app keeps them)."""
    from nofx.api import create_app

    with settings_env(NOFX_API_TOKEN=",".join(tokens)):
        return create_app({"TESTING": True})


def event_of(message: dict[str, Any]) -> dict[str, Any]:
    """The Event carried by an SSE message."""
    return json.loads(message["data"])


def tagged_database_url(tag: str) -> str:
    """The session's database URL, with connections named ``tag`` in ``pg_stat_activity``."""
    url = os.environ["NOFX_DATABASE_URL"]
    return f"{url}{'&' if '?' in url else '?'}application_name={tag}"


def pg_connections(tag: str) -> int:
    """How many connections Postgres has open for ``application_name = tag``."""
    engine = create_engine(os.environ["NOFX_DATABASE_URL"], poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :tag"),
                {"tag": tag},
            ).scalar_one()
    finally:
        engine.dispose()
