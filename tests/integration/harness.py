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
from services.cli.stack import NatsServer
from services.common import bus
from services.common.settings import Settings
from services.jobs import db, reports
from services.jobs.commands import Commands
from services.jobs.fanout import Fanout
from services.jobs.models import JobRow, LeadRow, TaskRow
from services.jobs.outbox import Outbox
from services.jobs.page_tokens import PageTokens
from services.jobs.report_consumer import ReportConsumer
from services.jobs.server import assemble
from services.jobs.watchdog import Watchdog
from services.jobs.webhook_sender import WebhookSender
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
    settings: Settings
    webhooks: WebhookSender  # not running: nothing is sent, a wake-up stays set

    async def apply(self, report: work_pb2.WorkerReport) -> None:
        """Apply one report as the report consumer does (checked, then in a transaction),
        as the worker of the task it is about (see :meth:`about_task`)."""
        await self.about_task(report)
        reports.check(report)
        await self.consumer.apply([report])

    async def about_task(self, report: work_pb2.WorkerReport) -> work_pb2.WorkerReport:
        """``report`` made by the worker of the task it is about: unless it names a task,
        the latest task queued for its job and lead, whose id and attempt it takes."""
        if not report.task_id:
            async with self.sessions() as session:
                query = (
                    select(TaskRow)
                    .where(
                        TaskRow.job_id == report.job_id,
                        TaskRow.lead_id == reports.lead_id_of(report),
                    )
                    .order_by(TaskRow.attempt.desc(), TaskRow.created_at.desc())
                )
                task = (await session.scalars(query)).first()
            assert task is not None, f"no task queued for {report.job_id}"
            report.task_id, report.attempt = task.id, task.attempt
        return report

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
    database_url: str, nats: NatsServer, **settings_given: Any
) -> AsyncIterator[Harness]:
    """One jobs replica's parts on ``database_url`` (migrated) and ``nats`` (as its
    superuser: the tests play the workers on the same connection), with
    ``settings_given`` (Settings fields) on top of the defaults."""
    # Prices high enough for any charge the tests' reports make (one call each).
    prices = {f"price_{op}": 1.0 for op in PRICED}
    settings = nats.settings(database_url=database_url, **{**prices, **settings_given})
    engine = db.create_engine(database_url)
    try:
        await db.migrate(engine)
        sessions = db.sessionmaker(engine)
        async with connected(settings) as (nc, js):
            fanout = Fanout(nc)
            await fanout.start()
            parts = assemble(settings, engine, nc, js, fanout)
            assert parts.webhooks is not None
            try:
                yield Harness(
                    engine, sessions, nc, js, parts.commands, parts.outbox, parts.reports,
                    parts.watchdog, PageTokens(b"test"), settings, parts.webhooks,
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


PRICED = ("google_text_search", "google_place_details", "hunter_domain_search", "neverbounce_check")


def report(job_id: str, report_id: str, cost: float = 0.0, **body: object) -> work_pb2.WorkerReport:
    """A report with one call of ``cost`` (a search for discovery, an email search for a
    lead), its task filled in when it is applied (:meth:`Harness.apply`)."""
    about_lead = (
        any(getattr(b, "lead_id", "") for b in body.values()) or "enrichment_result" in body
    )
    operation = "email_search" if about_lead else "text_search"
    charge = work_pb2.Charge(provider="sandbox", operation=operation, cost_usd=cost)
    charges = [charge] if cost else []
    return work_pb2.WorkerReport(
        report_id=report_id,
        job_id=job_id,
        charges=charges,
        providers={"places": "sandbox"},
        **body,  # type: ignore[arg-type]
    )


def discovered(job_id: str, n: int, report_id: str = "result") -> work_pb2.WorkerReport:
    """A discovery result of ``n`` qualified places (0.1 USD charged)."""
    result = work_pb2.DiscoveryResult(businesses_found=n, qualified=places(n))
    return report(job_id, report_id, 0.1, discovery_result=result)


def places(n: int) -> list[work_pb2.Place]:
    return [
        work_pb2.Place(place_id=f"p{i}", name=f"Cafe {i}", website=f"https://cafe{i}.example",
                       confidence_score=90 - i)
        for i in range(n)
    ]  # fmt: skip
