"""``python -m services.jobs.migrate``: bring the database schema to the latest migration
and exit (a Kubernetes migration Job runs this before the jobs service starts)."""

from __future__ import annotations

import asyncio
import logging

from services.common.logs import setup_logging
from services.common.settings import Settings
from services.jobs import db

log = logging.getLogger(__name__)


async def run(settings: Settings) -> None:
    engine = db.create_engine(settings.effective_database_url)
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()


def main() -> None:
    settings = Settings.load_or_exit()
    setup_logging(settings.log_level, "migrate", settings.log_format)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
