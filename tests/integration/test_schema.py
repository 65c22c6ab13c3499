"""The migrations build exactly the schema the models describe (tables, columns, indexes,
constraints), on SQLite and on PostgreSQL when TEST_DATABASE_URL is set: a model changed
without its migration, or the reverse, fails here rather than in production."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from services.jobs import db
from services.jobs.models import Base
from tests.integration.harness import Harness


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": False})
    diffs = compare_metadata(context, Base.metadata)
    # alembic's own bookkeeping table is not a model.
    return [d for d in diffs if "alembic_version" not in repr(d)]


async def test_migrations_match_the_models(harness: Harness) -> None:
    await db.migrate(harness.engine)
    async with harness.engine.connect() as conn:
        assert await conn.run_sync(_differences) == []
