"""Alembic environment. The jobs service passes its own connection (see db.migrate); run
from the command line, it uses DATABASE_URL through the service's settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from services.jobs.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    from services.common.settings import Settings
    from services.jobs.db import create_engine

    engine = create_engine(Settings.from_env().effective_database_url)
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone())
