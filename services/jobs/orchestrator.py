"""Orchestration: submit, cancel, and applying worker reports to job state.

Every write goes through here, in one transaction each: load the job, run the pure state
machine (:mod:`services.jobs.machine`), carry out its effects on leads and the outbox, store
the new state. After commit: publish the outbox rows and the snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.errors import FailedPrecondition, ResourceExhausted
from services.common.settings import Settings
from services.jobs import machine as m
from services.jobs.convert import config_to_json, job_proto, state_of, store_state
from services.jobs.db import WriteGate
from services.jobs.events import add_costs, event_of
from services.jobs.fanout import Fanout
from services.jobs.models import (
    AppliedReportRow,
    CampaignRow,
    JobRow,
    LeadRow,
    OutboxRow,
    utcnow,
)
from services.jobs.outbox import Outbox, outbox_row
from services.jobs.store import job_for_user

log = logging.getLogger(__name__)

STALE_RETRIES = 8
# Reports applied in one transaction at most: whatever has arrived, up to this many.
REPORT_BATCH = 32


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def discovery_task_row(job: JobRow, attempt: int) -> OutboxRow:
    task = work_pb2.DiscoveryTask(
        job_id=job.id,
        campaign_id=job.campaign_id,
        config=jobs_pb2.CampaignConfig(**job.config),
        attempt=attempt,
    )
    return outbox_row(f"discovery.{job.id}.{attempt}", bus.DISCOVERY_SUBJECT, task)


@dataclass
class Applied:
    """What a committed transaction leaves to do."""

    outbox: list[OutboxRow] = field(default_factory=list)
    updates: list[jobs_pb2.JobUpdate] = field(default_factory=list)
    job_id: str = ""
    stop_work: bool = False


def _share(total: int, parts: int) -> list[int]:
    """Split ``total`` micro-dollars into ``parts`` exact shares, the first ones larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        nc: NATS,
        js: JetStreamContext,
        fanout: Fanout,
        write_gate: WriteGate,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._nc = nc
        self._js = js
        self._fanout = fanout
        self._write = write_gate
        self.outbox = Outbox(sessions, js, write_gate)

    # Submit and cancel ------------------------------------------------------------------

    async def submit(
        self, user_id: str, config: jobs_pb2.CampaignConfig, idempotency_key: str
    ) -> JobRow:
        """Record a PENDING job, its campaign and its discovery task; queue the task.

        One transaction: the idempotency lookup, the per-user limit and the inserts."""
        now = utcnow()
        job_id, campaign_id = new_id("job"), new_id("cmp")
        job = JobRow(
            id=job_id,
            campaign_id=campaign_id,
            user_id=user_id,
            type="campaign",
            status=m.Status.PENDING.value,
            stage=m.Stage.QUEUED.value,
            progress=0,
            version=1,
            config=config_to_json(config),
            metrics=m.Metrics().to_json(),
            error="",
            message="Queued",
            attempts=1,
            max_attempts=self._settings.job_max_attempts,
            idempotency_key=idempotency_key or None,
            created_at=now,
            updated_at=now,
        )
        campaign = CampaignRow(
            id=campaign_id,
            job_id=job_id,
            user_id=user_id,
            business_type=config.business_type,
            location=config.location,
            status=job.status,
            created_at=now,
        )
        task = discovery_task_row(job, attempt=1)
        try:
            async with self._write(), self._sessions() as session, session.begin():
                if idempotency_key:
                    existing = await self._by_idempotency_key(session, user_id, idempotency_key)
                    if existing is not None:
                        return existing
                await self._check_active_jobs(session, user_id)
                session.add_all([job, campaign, task])
        except IntegrityError:
            # The same key raced in from a concurrent request: that one won.
            async with self._sessions() as session:
                existing = await self._by_idempotency_key(session, user_id, idempotency_key)
            if existing is None:
                raise
            return existing
        await self.outbox.publish([task])
        return job

    async def _check_active_jobs(self, session: AsyncSession, user_id: str) -> None:
        limit = self._settings.max_active_jobs_per_user
        unfinished = (m.Status.PENDING.value, m.Status.PROCESSING.value)
        query = select(func.count()).where(JobRow.user_id == user_id, JobRow.status.in_(unfinished))
        active = await session.scalar(query) or 0
        if active >= limit:
            raise ResourceExhausted(
                f"{active} unfinished jobs: at most {limit} at once (MAX_ACTIVE_JOBS_PER_USER)"
            )

    @staticmethod
    async def _by_idempotency_key(session: AsyncSession, user_id: str, key: str) -> JobRow | None:
        query = select(JobRow).where(JobRow.user_id == user_id, JobRow.idempotency_key == key)
        return (await session.scalars(query)).first()

    async def _transact(
        self, job_id: str, change: Callable[[AsyncSession], Awaitable[Applied | None]]
    ) -> Applied | None:
        """Run ``change`` in a transaction, again if another replica changed the job first
        (optimistic locking); then publish what it caused."""
        for _ in range(STALE_RETRIES):
            try:
                async with self._write(), self._sessions() as session, session.begin():
                    applied = await change(session)
                break
            except StaleDataError:
                continue  # read the job again
        else:
            raise RuntimeError(f"job {job_id} kept changing; giving up for now")
        if applied is not None:
            await self._after_commit(applied)
        return applied

    async def cancel(self, user_id: str, job_id: str) -> JobRow:
        """Cancel a PENDING or PROCESSING job; a finished one is FailedPrecondition."""
        rows: list[JobRow] = []

        async def change(session: AsyncSession) -> Applied:
            row = await job_for_user(session, user_id, job_id)
            state = state_of(row)
            if state.status.terminal:
                raise FailedPrecondition(
                    f"job {job_id} is already {state.status.value}; only pending or "
                    "processing jobs can be cancelled"
                )
            rows.append(row)
            return await self._store(session, row, m.transition(state, m.CancelRequested()), None)

        await self._transact(job_id, change)
        return rows[-1]

    async def check_stalled(self) -> int:
        """Retry or fail every unfinished job that has not changed for STALL_TIMEOUT_S."""
        timeout = self._settings.stall_timeout_s
        cutoff = utcnow() - timedelta(seconds=timeout)
        unfinished = (m.Status.PENDING.value, m.Status.PROCESSING.value)
        async with self._sessions() as session:
            query = (
                select(JobRow.id)
                .where(JobRow.status.in_(unfinished), JobRow.updated_at < cutoff)
                .limit(100)
            )
            job_ids = list((await session.scalars(query)).all())

        async def change(session: AsyncSession, job_id: str) -> Applied | None:
            job = await session.get(JobRow, job_id)
            if job is None or job.status not in unfinished or job.updated_at >= cutoff:
                return None  # it moved meanwhile
            idle = (utcnow() - job.updated_at).total_seconds()
            log.warning("job %s stalled in %s for %.0fs", job_id, job.stage, idle)
            return await self._store(
                session, job, m.transition(state_of(job), m.Stalled(idle)), None
            )

        for job_id in job_ids:
            await self._transact(job_id, functools.partial(change, job_id=job_id))
        return len(job_ids)

    async def run_watchdog(self, stop: asyncio.Event) -> None:
        """Look for stalled jobs now and then, so no job stays unfinished forever."""
        interval = min(30.0, self._settings.stall_timeout_s / 4)
        while not stop.is_set():
            try:
                await self.check_stalled()
            except Exception:
                log.exception("stall check failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    # Reports ----------------------------------------------------------------------------

    async def apply_report(self, report: work_pb2.WorkerReport) -> None:
        """Apply one worker report exactly once, then publish what it caused."""
        try:
            await self._transact(report.job_id, lambda session: self._apply(session, report))
        except IntegrityError:
            pass  # the same report was applied concurrently by another replica

    @staticmethod
    async def _preload(session: AsyncSession, reports: list[work_pb2.WorkerReport]) -> set[str]:
        """Load in three queries what a batch of reports will look at: which of their ids
        (intents included) were applied already, their jobs and their leads (the jobs and
        leads land in the session's identity map, so later lookups cost no query)."""
        ids = [r.report_id for r in reports] + [i.report_id for r in reports for i in r.intents]
        applied = set(
            (
                await session.scalars(
                    select(AppliedReportRow.report_id).where(AppliedReportRow.report_id.in_(ids))
                )
            ).all()
        )
        job_ids = {r.job_id for r in reports}
        await session.scalars(select(JobRow).where(JobRow.id.in_(job_ids)))
        lead_ids = {
            r.enrichment_result.lead_id or r.task_failure.lead_id or r.charges_only.lead_id
            for r in reports
        } - {""}
        if lead_ids:
            await session.scalars(select(LeadRow).where(LeadRow.id.in_(lead_ids)))
        return applied

    async def _apply(
        self,
        session: AsyncSession,
        report: work_pb2.WorkerReport,
        applied_ids: set[str] | None = None,
    ) -> Applied | None:
        """Apply one report in ``session``; ``applied_ids``, when given, holds the ids known
        to be applied (from :meth:`_preload`) and is kept up to date."""

        async def seen(report_id: str) -> bool:
            if applied_ids is None:
                return await session.get(AppliedReportRow, report_id) is not None
            return report_id in applied_ids

        def mark(report_id: str) -> None:
            session.add(AppliedReportRow(report_id=report_id, job_id=report.job_id))
            if applied_ids is not None:
                applied_ids.add(report_id)

        if await seen(report.report_id):
            return None
        mark(report.report_id)
        job = await session.get(JobRow, report.job_id)
        if job is None:
            log.warning("report %s for unknown job %s dropped", report.report_id, report.job_id)
            return None
        # Intents repeated on this report and not applied yet are applied with it (their
        # own copies will find their ids and change nothing).
        charges = list(report.charges)
        for intent in report.intents:
            if not await seen(intent.report_id):
                mark(intent.report_id)
                charges.append(intent.charge)
        event = await event_of(session, job, report, charges)
        result = m.transition(state_of(job), event)
        return await self._store(session, job, result, report)

    async def _store(
        self,
        session: AsyncSession,
        job: JobRow,
        result: m.Transition,
        report: work_pb2.WorkerReport | None,
    ) -> Applied:
        applied = Applied(job_id=job.id, stop_work=m.StopWork() in result.effects)
        if result.state is None:
            return applied
        for effect in result.effects:
            applied.outbox += await self._carry_out(session, job, result.state, effect, report)
        store_state(job, result.state, result.snapshots[-1].message, utcnow())
        if result.state.status.terminal:
            campaign = await session.get(CampaignRow, job.campaign_id)
            if campaign is not None:
                campaign.status = job.status
                campaign.completed_at = campaign.completed_at or job.completed_at
        session.add_all(applied.outbox)
        stamp = report.published_at if report is not None else None
        for snap in result.snapshots:
            update_msg = jobs_pb2.JobUpdate(job=job_proto(job, snap.state), message=snap.message)
            if stamp is not None and stamp.seconds:
                update_msg.report_published_at.CopyFrom(stamp)
            applied.updates.append(update_msg)
        return applied

    async def _carry_out(
        self,
        session: AsyncSession,
        job: JobRow,
        state: m.JobState,
        effect: m.Effect,
        report: work_pb2.WorkerReport | None,
    ) -> list[OutboxRow]:
        match effect:
            case m.StoreLeads():
                assert report is not None
                places = list(report.discovery_result.qualified)
                shares = _share(state.metrics.discovery_cost_micros, max(1, len(places)))
                places_provider = state.metrics.providers.get("places", "places")
                now = utcnow()
                session.add_all(
                    LeadRow(
                        id=new_id("lead"),
                        campaign_id=job.campaign_id,
                        job_id=job.id,
                        place_id=p.place_id,
                        rank=rank,
                        business_name=p.name,
                        address=p.address,
                        phone=p.phone,
                        website=p.website,
                        rating=p.rating,
                        review_count=p.review_count,
                        confidence_score=p.confidence_score,
                        cost_micros=shares[rank],
                        cost_by_provider={places_provider: shares[rank]} if shares[rank] else {},
                        created_at=now,
                        updated_at=now,
                    )
                    for rank, p in enumerate(places)
                )
                await session.flush()
            case m.ShareCost(micros=micros):
                leads = await self._leads(session, job.id)
                places_provider = state.metrics.providers.get("places", "places")
                for lead, share in zip(leads, _share(micros, max(1, len(leads))), strict=False):
                    add_costs(lead, {places_provider: share})
            case m.DispatchLeads(count=count, allowance_micros=allowance):
                query = (
                    select(LeadRow)
                    .where(LeadRow.job_id == job.id, LeadRow.state == "pending")
                    .order_by(LeadRow.rank)
                    .limit(count)
                )
                rows = []
                for lead in (await session.scalars(query)).all():
                    lead.state = "dispatched"
                    rows.append(self._enrichment_task(job, lead, allowance, state.attempts))
                return rows
            case m.SkipPendingLeads():
                await session.execute(
                    update(LeadRow)
                    .where(LeadRow.job_id == job.id, LeadRow.state == "pending")
                    .values(state="skipped", email_status="skipped_budget")
                )
            case m.FinalizeCampaign():
                campaign = await session.get(CampaignRow, job.campaign_id)
                if campaign is not None:
                    campaign.results_count = state.metrics.qualified_leads
                    campaign.total_cost_micros = state.metrics.total_cost_micros
                    campaign.avg_confidence = state.metrics.avg_confidence
            case m.RetryDiscovery(attempt=attempt):
                return [discovery_task_row(job, attempt)]
            case m.RedispatchLeads():
                query = select(LeadRow).where(
                    LeadRow.job_id == job.id, LeadRow.state == "dispatched"
                )
                allowance = state.metrics.lead_price_micros if state.budget_micros else 0
                return [
                    self._enrichment_task(job, lead, allowance, state.attempts)
                    for lead in (await session.scalars(query)).all()
                ]
            case m.StopWork():
                pass  # after commit: see _after_commit
        return []

    @staticmethod
    async def _leads(session: AsyncSession, job_id: str) -> list[LeadRow]:
        query = select(LeadRow).where(LeadRow.job_id == job_id).order_by(LeadRow.rank)
        return list((await session.scalars(query)).all())

    @staticmethod
    def _enrichment_task(
        job: JobRow, lead: LeadRow, allowance_micros: int, attempt: int
    ) -> OutboxRow:
        task = work_pb2.EnrichmentTask(
            job_id=job.id,
            campaign_id=job.campaign_id,
            lead_id=lead.id,
            place=work_pb2.Place(
                place_id=lead.place_id,
                name=lead.business_name,
                address=lead.address,
                phone=lead.phone,
                website=lead.website,
                confidence_score=lead.confidence_score,
            ),
            verify_emails=bool(job.config.get("verify_emails", False)),
            attempt=attempt,
            budget_micros=allowance_micros,
        )
        return outbox_row(f"enrichment.{lead.id}.{attempt}", bus.ENRICHMENT_SUBJECT, task)

    async def _after_commit(self, *batch: Applied) -> None:
        """Publish what committed transactions caused: stop notices, queued tasks (all in
        one go), then the snapshots."""
        for applied in batch:
            if applied.stop_work:
                await bus.CancelRegistry.announce(self._nc, self._js, applied.job_id)
        await self.outbox.publish([row for applied in batch for row in applied.outbox])
        for applied in batch:
            for update_msg in applied.updates:
                await self._fanout.publish(applied.job_id, update_msg)

    # The report consumer ----------------------------------------------------------------

    async def apply_reports(self, reports: list[work_pb2.WorkerReport]) -> None:
        """Apply a batch of reports in one transaction (one commit, each job loaded once),
        falling back to one transaction per report if the batch meets a conflict."""
        if len(reports) == 1:
            await self.apply_report(reports[0])
            return
        done: list[Applied] = []
        try:
            async with self._write(), self._sessions() as session, session.begin():
                applied_ids = await self._preload(session, reports)
                for report in reports:
                    applied = await self._apply(session, report, applied_ids)
                    if applied is not None:
                        done.append(applied)
        except (StaleDataError, IntegrityError):
            # Another replica touched one of these jobs: take them one at a time.
            for report in reports:
                await self.apply_report(report)
            return
        await self._after_commit(*done)

    async def run_report_consumer(self, stop: asyncio.Event) -> None:
        """Take reports from the shared durable consumer and apply each once, in batches of
        whatever has arrived."""
        psub = await self._js.pull_subscribe_bind(bus.JOBS_CONSUMER, bus.EVENTS_STREAM)
        while not stop.is_set():
            try:
                msgs = await psub.fetch(REPORT_BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:  # disconnected: the client reconnects by itself
                log.warning("report fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            good: list[Msg] = []
            reports: list[work_pb2.WorkerReport] = []
            for msg in msgs:
                try:
                    reports.append(work_pb2.WorkerReport.FromString(msg.data))
                    good.append(msg)
                except DecodeError:
                    log.error("undecodable report on %s dropped", msg.subject)
                    await msg.term()
            try:
                await self.apply_reports(reports)
            except Exception:
                log.exception("applying %d report(s) failed; will retry", len(reports))
                for msg in good:
                    await msg.nak(delay=1.0)
                continue
            for msg in good:
                await msg.ack()
