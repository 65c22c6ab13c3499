"""Database engine, sessions and start-up migrations for the jobs service.

The schema comes from Alembic migrations, applied when the service starts (never from
``create_all``). SQLite is the default (a file under DATA_DIR, WAL mode so readers do not
block the writer); PostgreSQL when DATABASE_URL says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from services.jobs.sqlite_wal import INTERVAL_S, Checkpointer

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed number: serializes migrations of jobs replicas starting together on PostgreSQL.
_MIGRATION_LOCK_ID = 0x70726F73
WAL_SIZE_LIMIT = 32 * 1024 * 1024


def normalize_url(url: str) -> str:
    """Accept the plain scheme operators write and pick the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        url = "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_file(url: URL) -> str | None:
    """The database file of a SQLite URL (None in memory)."""
    path = url.database
    return path if path and path != ":memory:" else None


def create_engine(url: str) -> AsyncEngine:
    url = normalize_url(url)
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if path := _sqlite_file(parsed):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=10)
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        event.listen(engine.sync_engine.pool, "connect", _note_last_use)  # fresh: no test
        event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
        event.listen(engine.sync_engine.pool, "checkin", _note_last_use)
    return engine


# A pooled connection idle longer than this is tested before use (see _ping_if_idle).
PING_AFTER_IDLE_S = 1.0
_LAST_USE = "prospect_last_use"


def _note_last_use(_dbapi_conn: Any, record: Any) -> None:
    if record is not None:
        record.info[_LAST_USE] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Test a pooled connection that sat idle before handing it out; a dead one is
    replaced (the pool's documented pessimistic disconnect handling). SQLAlchemy's
    ``pool_pre_ping`` tests every checkout, which on asyncpg is three round trips (BEGIN,
    a no-op, ROLLBACK) before each transaction: a quarter of the statements of a busy
    service. A connection in steady use was just seen working; one that sat idle (through
    a database restart, a failover, an idle timeout on a proxy) is the one to test."""
    last_use = record.info.get(_LAST_USE)
    if last_use is not None and time.monotonic() - last_use < PING_AFTER_IDLE_S:
        return
    try:
        dbapi_conn.ping()
    except Exception as exc:
        raise DisconnectionError(f"pooled connection is gone: {type(exc).__name__}") from exc


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _sqlite_explicit_transactions(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # the driver's own BEGIN handling off: see below


def _sqlite_no_checkpoints(dbapi_conn: Any, _record: Any) -> None:
    # Checkpoints run on a thread of their own (services.jobs.sqlite_wal), not in a commit.
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
    # When the log starts over, what it grew to past this is given back to the disk.
    dbapi_conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")


_READ_ONLY = "prospect_read_only"


def _sqlite_begin_immediate(conn: Connection) -> None:
    # Take the write lock when the transaction starts, so what it reads cannot change
    # before it writes (the driver would begin only at the first INSERT or UPDATE). A read
    # takes no lock: in WAL mode it sees the last commit and blocks nobody.
    read_only = conn.get_execution_options().get(_READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Writer:
    """Runs the jobs service's write transactions (and its hottest read): synchronous
    functions of a Connection.

    On SQLite, directly on the event loop's thread, over the standard library driver: a
    statement takes microseconds there, while the async driver (aiosqlite) hops to its
    thread and back for each step, about a millisecond a statement with SQLAlchemy on top.
    A transaction runs to its end without yielding, so this process's writes never meet in
    SQLite's busy handler (which sleeps in growing steps). The price: while another
    process holds SQLite's write lock (a retention purge), the event loop waits with the
    transaction. Its commits leave WAL checkpoints to a thread of its own, which holds
    them off for a moment each round (:mod:`services.jobs.sqlite_wal`). On PostgreSQL,
    through ``run_sync`` on the async engine.
    """

    def __init__(self, engine: AsyncEngine, *, checkpoint_interval_s: float = INTERVAL_S) -> None:
        self._engine = engine
        self._sync: Engine | None = None
        self.checkpointer: Checkpointer | None = None  # on a SQLite file
        # Held by each SQLite write transaction; the checkpointer takes it to catch up.
        self._gate = threading.Lock()
        if engine.dialect.name == "sqlite":
            self._sync = create_sync_engine(engine.url.set(drivername="sqlite"))
            event.listen(self._sync, "connect", _sqlite_pragmas)
            event.listen(self._sync, "connect", _sqlite_explicit_transactions)
            event.listen(self._sync, "begin", _sqlite_begin_immediate)
            if path := _sqlite_file(engine.url):
                event.listen(self._sync, "connect", _sqlite_no_checkpoints)
                self.checkpointer = Checkpointer(path, self._gate, checkpoint_interval_s)
                self.checkpointer.start()

    @property
    def blocks_loop(self) -> bool:
        """Whether a transaction holds the event loop until it ends (SQLite, above)."""
        return self._sync is not None

    async def run(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction, committed when it returns, rolled back if it raises."""
        if self._sync is not None:
            with self._gate, self._sync.begin() as conn:
                return work(conn)
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """``work`` reading in a transaction of its own, outside the queue of writes (the
        same quick path for the reads every watch stream makes)."""
        if self._sync is not None:
            with self._sync.connect().execution_options(**{_READ_ONLY: True}) as conn:
                with conn.begin():
                    return work(conn)
        async with self._engine.connect() as conn:
            return await conn.run_sync(work)

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        if self._sync is not None:
            self._sync.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    try:
        command.upgrade(alembic_config(connection), "head")
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the latest migration. Safe to run from several replicas."""
    async with engine.connect() as conn:
        await conn.run_sync(_upgrade)
        await conn.commit()
    log.info("database schema is current")
