"""``python -m services.jobs.retention``: delete finished jobs older than RETENTION_DAYS,
with their campaign, leads, applied-report records and history (a Kubernetes CronJob runs
this). Unfinished jobs are never touched."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.logs import setup_logging
from services.common.settings import Settings
from services.jobs import db
from services.jobs.machine import Status
from services.jobs.models import (
    AppliedReportRow,
    CampaignRow,
    JobEventRow,
    JobRow,
    LeadRow,
    TaskRow,
    WebhookAttemptRow,
    WebhookDeliveryRow,
    utcnow,
)

log = logging.getLogger(__name__)

BATCH = 500
FINISHED = (Status.COMPLETED.value, Status.FAILED.value, Status.CANCELLED.value)


async def purge(sessions: async_sessionmaker[AsyncSession], days: float) -> int:
    """Delete finished jobs completed more than ``days`` ago; returns how many."""
    cutoff = utcnow() - timedelta(days=days)
    total = 0
    while True:
        async with sessions() as session, session.begin():
            query = (
                select(JobRow.id)
                .where(JobRow.status.in_(FINISHED), JobRow.completed_at < cutoff)
                .limit(BATCH)
            )
            ids = list((await session.scalars(query)).all())
            if not ids:
                return total
            await session.execute(delete(LeadRow).where(LeadRow.job_id.in_(ids)))
            await session.execute(delete(CampaignRow).where(CampaignRow.job_id.in_(ids)))
            await session.execute(delete(AppliedReportRow).where(AppliedReportRow.job_id.in_(ids)))
            await session.execute(delete(TaskRow).where(TaskRow.job_id.in_(ids)))
            for webhook in (WebhookDeliveryRow, WebhookAttemptRow):  # and its webhook's
                await session.execute(delete(webhook).where(webhook.job_id.in_(ids)))
            await session.execute(delete(JobEventRow).where(JobEventRow.job_id.in_(ids)))
            await session.execute(delete(JobRow).where(JobRow.id.in_(ids)))
        total += len(ids)


async def run(settings: Settings) -> int:
    engine = db.create_engine(settings.effective_database_url)
    try:
        count = await purge(db.sessionmaker(engine), settings.retention_days)
    finally:
        await engine.dispose()
    log.info(
        "retention: deleted %d finished job(s) older than %g days", count, settings.retention_days
    )
    return count


def main() -> None:
    settings = Settings.load_or_exit()
    setup_logging(settings.log_level, "retention", settings.log_format)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
