"""SQLite's WAL checkpoints run on the writer's own thread, never inside a commit on the
event loop, and the log still starts over under steady writes (a real SQLite file)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.jobs import db
from services.jobs.sqlite_wal import Checkpoint, Checkpointer

# Each row overflows its 4 KiB page, so every commit adds at least one page to the log.
_INSERT = text("INSERT INTO t (x) VALUES (randomblob(5000))")
# SQLite's own checkpoint, which a commit runs once the log passes this many pages.
_AUTOCHECKPOINT_PAGES = 1000


def _insert(conn: Connection) -> None:
    conn.execute(_INSERT)


def _log(path: Path) -> Checkpoint:
    """The log as another connection finds it (and copies it back: a PASSIVE checkpoint)."""
    with sqlite3.connect(path) as conn:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return Checkpoint(bool(busy), frames, copied)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[tuple[Path, AsyncEngine]]:
    path = tmp_path / "prospect.db"
    engine = db.create_engine(f"sqlite:///{path}")
    try:
        yield path, engine
    finally:
        await engine.dispose()


async def test_a_commit_never_checkpoints(
    database: tuple[Path, AsyncEngine],
) -> None:
    path, engine = database
    writer = db.Writer(engine, checkpoint_interval_s=3600)  # its thread stays out of it
    try:
        await writer.run(lambda conn: conn.execute(text("CREATE TABLE t (x BLOB)")))
        commits = _AUTOCHECKPOINT_PAGES + 200
        for _ in range(commits):
            await writer.run(_insert)
        log = _log(path)
    finally:
        writer.dispose()
    # With SQLite's own checkpoints the log would have started over past 1,000 pages.
    assert log.log_frames >= commits
    assert log.copied_frames == log.log_frames  # and it copies back whole when asked


async def test_the_log_starts_over_while_writes_go_on(
    database: tuple[Path, AsyncEngine],
) -> None:
    """A checkpoint beside steady writes never catches up with them: only the last pass,
    with the writes held off, lets the next write start the log over."""
    path, engine = database
    writer = db.Writer(engine, checkpoint_interval_s=0.05)
    try:
        checkpointer = writer.checkpointer
        assert checkpointer is not None
        await writer.run(lambda conn: conn.execute(text("CREATE TABLE t (x BLOB)")))
        commits = 0
        while checkpointer.rounds < 3 and commits < 1_000_000:  # no pause between writes
            await writer.run(_insert)
            commits += 1
        log = _log(path)
    finally:
        writer.dispose()
    assert checkpointer.rounds >= 3
    # Every commit added a page or more: a log that never started over would hold them all.
    assert log.log_frames < commits


async def test_a_round_with_nothing_new_leaves_the_writes_alone(
    database: tuple[Path, AsyncEngine],
) -> None:
    """Idle, a round does not take the writers' gate (it would hold up a write for
    nothing every half second)."""
    path, engine = database
    writer = db.Writer(engine, checkpoint_interval_s=3600)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await writer.run(lambda conn: conn.execute(text("CREATE TABLE t (x BLOB)")))
        await writer.run(_insert)
        gate = threading.Lock()
        checkpointer = Checkpointer(str(path), gate)
        first = checkpointer.checkpoint(conn)
        with gate:  # held: a round that wanted it would wait for good
            again = await asyncio.wait_for(asyncio.to_thread(checkpointer.checkpoint, conn), 30)
    finally:
        conn.close()
        writer.dispose()
    assert first.log_frames > 0 and again == first


async def test_dispose_stops_the_checkpoint_thread(
    database: tuple[Path, AsyncEngine],
) -> None:
    _, engine = database
    writer = db.Writer(engine)
    assert any(t.name == "sqlite-checkpoints" for t in threading.enumerate())
    writer.dispose()
    assert not any(t.name == "sqlite-checkpoints" for t in threading.enumerate())
