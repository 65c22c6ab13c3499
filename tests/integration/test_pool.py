"""The PostgreSQL connection pool: a pooled connection that sat idle is tested before use,
so one the server dropped meanwhile (a restart, a failover, a proxy's idle timeout) is
replaced instead of failing the transaction handed it; one in steady use is not tested
(services/jobs/db.py, ``_ping_if_idle``). PostgreSQL only: SQLite has no connections to
lose, and runs here when TEST_DATABASE_URL is set (as CI does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.jobs import db
from tests.conftest import TEST_DATABASE_URL


@pytest.fixture(params=[TEST_DATABASE_URL] if TEST_DATABASE_URL else [])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(request.param)
    engine.sync_engine.pool.dispose()
    yield engine
    await engine.dispose()


async def _pooled_backend(engine: AsyncEngine) -> int:
    """The server process of the pool's one connection (used, then back in the pool)."""
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return int(pid)


async def _terminate(pid: int) -> None:
    """End the server process ``pid`` and wait until it is gone."""
    other = db.create_engine(TEST_DATABASE_URL)
    alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
    try:
        async with other.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            for _ in range(500):
                if not (await conn.execute(alive, {"pid": pid})).scalar_one():
                    return
                # pg_stat_activity is read once a transaction: without ending it, a
                # backend still exiting at the first look stays "running" for good (a
                # loaded machine failed the full suite this way).
                await conn.rollback()
                await asyncio.sleep(0.01)
            raise AssertionError(f"server process {pid} still running")
    finally:
        await other.dispose()


async def test_a_dropped_idle_connection_is_replaced_before_use(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every checkout counts as idle
    dropped = await _pooled_backend(engine)
    await _terminate(dropped)

    assert await _pooled_backend(engine) != dropped  # a fresh connection, no error


async def test_a_connection_in_steady_use_is_not_tested(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: without the test at checkout, the dropped connection is handed out
    # and its transaction fails (once: the pool then discards it).
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)
    dropped = await _pooled_backend(engine)
    await _terminate(dropped)

    with pytest.raises(DBAPIError) as failed:
        await _pooled_backend(engine)
    assert failed.value.connection_invalidated
    assert await _pooled_backend(engine) != dropped
