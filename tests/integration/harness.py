"""What the integration tests of the jobs service share: the jobs service's parts wired as
``services.jobs.server`` wires them, on a real database and a real nats-server (no gRPC),
and helpers that make jobs, reports and places."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.settings import Settings
from services.jobs import db, reports
from services.jobs.commands import Commands
from services.jobs.fanout import Fanout
from services.jobs.models import JobRow, LeadRow
from services.jobs.outbox import Outbox
from services.jobs.report_consumer import ReportConsumer
from services.jobs.server import assemble
from services.jobs.validation import PageTokens
from services.jobs.watchdog import Watchdog
from tests.nats_helpers import connected


@dataclass
class Harness:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    nc: NATS
    js: JetStreamContext
    commands: Commands
    outbox: Outbox
    consumer: ReportConsumer
    watchdog: Watchdog
    tokens: PageTokens

    async def apply(self, report: work_pb2.WorkerReport) -> None:
        """Apply one report as the report consumer does (checked, then in a transaction)."""
        reports.check(report)
        await self.consumer.apply([report])

    async def job(self, job_id: str) -> JobRow:
        async with self.sessions() as session:
            row = await session.get(JobRow, job_id)
            assert row is not None
            return row

    async def leads(self, job_id: str) -> list[LeadRow]:
        async with self.sessions() as session:
            query = select(LeadRow).where(LeadRow.job_id == job_id).order_by(LeadRow.rank)
            return list((await session.scalars(query)).all())

    async def take(self, consumer: str, n: int) -> list[bytes]:
        """Take ``n`` tasks off a work consumer, as a worker would, and ack them (the
        server confirms each ack before this returns)."""
        psub = await self.js.pull_subscribe_bind(consumer, bus.WORK_STREAM)
        msgs = await psub.fetch(n, timeout=5)
        for msg in msgs:
            await msg.ack_sync()
        await psub.unsubscribe()
        return [msg.data for msg in msgs]


@asynccontextmanager
async def jobs_service(
    database_url: str, nats_url: str, **settings_given: Any
) -> AsyncIterator[Harness]:
    """One jobs replica's parts on ``database_url`` (migrated) and ``nats_url``, with
    ``settings_given`` (Settings fields) on top of the defaults."""
    settings = Settings(nats_url=nats_url, database_url=database_url, **settings_given)
    engine = db.create_engine(database_url)
    try:
        await db.migrate(engine)
        sessions = db.sessionmaker(engine)
        async with connected(settings) as (nc, js):
            fanout = Fanout(nc)
            await fanout.start()
            parts = assemble(settings, engine, nc, js, fanout)
            try:
                yield Harness(
                    engine, sessions, nc, js, parts.commands, parts.outbox, parts.reports,
                    parts.watchdog, PageTokens(b"test"),
                )  # fmt: skip
            finally:
                parts.writer.dispose()  # its connections, and their checkpoint thread
                await fanout.stop()
    finally:
        await engine.dispose()


def config(**overrides: object) -> jobs_pb2.CampaignConfig:
    values: dict[str, object] = dict(
        business_type="coffee shop",
        location="Seattle, WA",
        max_results=5,
        min_confidence_score=50,
        verify_emails=True,
    )
    values.update(overrides)
    return jobs_pb2.CampaignConfig(**values)  # type: ignore[arg-type]


def report(job_id: str, report_id: str, cost: float = 0.0, **body: object) -> work_pb2.WorkerReport:
    charges = [work_pb2.Charge(provider="sandbox", operation="call", cost_usd=cost)] if cost else []
    return work_pb2.WorkerReport(
        report_id=report_id,
        job_id=job_id,
        charges=charges,
        providers={"places": "sandbox"},
        **body,  # type: ignore[arg-type]
    )


def places(n: int) -> list[work_pb2.Place]:
    return [
        work_pb2.Place(place_id=f"p{i}", name=f"Cafe {i}", website=f"https://cafe{i}.example",
                       confidence_score=90 - i)
        for i in range(n)
    ]  # fmt: skip
