"""Fixtures shared by the whole suite. Every process a fixture starts, it stops."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from services.cli.stack import NatsServer
from services.jobs import db

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")

DATABASES = ["sqlite"] + (["postgresql"] if TEST_DATABASE_URL else [])


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free port, stopped after the test: the
    services' users, and a superuser (``nats_server.settings()``) for tests that play
    several roles on one connection."""
    server = NatsServer(tmp_path / "nats", superuser=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _reset_postgres(url: str) -> None:
    engine = db.create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture(params=DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database: a SQLite file, and PostgreSQL when TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'prospect.db'}"
        return
    await _reset_postgres(TEST_DATABASE_URL)
    yield TEST_DATABASE_URL
