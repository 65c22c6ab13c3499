"""Orchestration: submit, cancel, and applying worker reports to job state.

Every write is one transaction (a :class:`~services.jobs.unit.Unit`): load the job, run the
pure state machine (:mod:`services.jobs.machine`), carry out its effects on leads and the
outbox, store the new state. After commit: publish the outbox rows and the snapshots.
Submits arriving together share one transaction (:mod:`services.jobs.submits`), and so do
the reports taken from the event stream in one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta

import nats.errors
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.errors import FailedPrecondition
from services.common.settings import Settings
from services.jobs import machine as m
from services.jobs import store
from services.jobs.convert import job_proto, state_of, store_state
from services.jobs.db import Writer
from services.jobs.events import add_costs, event_of
from services.jobs.fanout import Fanout
from services.jobs.models import JobRow, LeadRow, OutboxRow, transient, utcnow
from services.jobs.outbox import Outbox
from services.jobs.submits import Submits
from services.jobs.tasks import discovery_task_row, enrichment_task_row, new_id
from services.jobs.unit import JOBS, UNFINISHED, Conflict, Unit

log = logging.getLogger(__name__)

STALE_RETRIES = 8
# Reports applied in one transaction at most: whatever has arrived, up to this many.
REPORT_BATCH = 32


@dataclass
class Applied:
    """What one transition leaves to do once committed."""

    outbox: list[OutboxRow] = field(default_factory=list)
    job_id: str = ""
    stop_work: bool = False
    job: JobRow | None = None  # the row as stored (the snapshots' fixed fields)
    snapshots: list[m.Snapshot] = field(default_factory=list)
    stamp: Timestamp | None = None  # when the report behind it was published

    def updates(self, snapshots: list[m.Snapshot]) -> list[jobs_pb2.JobUpdate]:
        assert self.job is not None
        out = []
        for snap in snapshots:
            update = jobs_pb2.JobUpdate(job=job_proto(self.job, snap.state), message=snap.message)
            if self.stamp is not None and self.stamp.seconds:
                update.report_published_at.CopyFrom(self.stamp)
            out.append(update)
        return out


def coalesced(batch: tuple[Applied, ...]) -> list[tuple[str, list[jobs_pb2.JobUpdate]]]:
    """The snapshots a committed batch publishes, per job: every version when one report
    changed the job, only the latest when several did (DESIGN.md: "under load, changes may
    be coalesced"); built only for what is published. A coalesced update carries the
    publish time of the oldest report folded into it, so the live-progress latency counts
    from there."""
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    oldest: dict[str, Timestamp] = {}
    for i, applied in enumerate(batch):
        if not applied.snapshots:
            continue
        job_id, stamp = applied.job_id, applied.stamp
        last[job_id] = i
        count[job_id] = count.get(job_id, 0) + 1
        if stamp is not None and stamp.seconds:
            if job_id not in oldest or stamp.ToNanoseconds() < oldest[job_id].ToNanoseconds():
                oldest[job_id] = stamp
    out = []
    for job_id, i in sorted(last.items(), key=lambda item: item[1]):
        snapshots = batch[i].snapshots
        if count[job_id] == 1:
            out.append((job_id, batch[i].updates(snapshots)))
            continue
        latest = replace(batch[i], stamp=oldest.get(job_id))
        out.append((job_id, latest.updates(snapshots[-1:])))
    return out


def _share(total: int, parts: int) -> list[int]:
    """Split ``total`` micro-dollars into ``parts`` exact shares, the first ones larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


Change = Callable[[Unit], list[Applied]]


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        nc: NATS,
        js: JetStreamContext,
        fanout: Fanout,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._js = js
        self._fanout = fanout
        self._writer = Writer(engine)
        self.outbox = Outbox(js, self._writer)
        self._submits = Submits(settings, self._writer, self.outbox)

    def close(self) -> None:
        self._writer.dispose()

    async def job(self, user_id: str, job_id: str) -> JobRow:
        """The caller's job as stored now (NotFound for anyone else's)."""
        return await self._writer.read(lambda conn: store.job_of_user(conn, user_id, job_id))

    # Submit and cancel ------------------------------------------------------------------

    async def submit(
        self, user_id: str, config: jobs_pb2.CampaignConfig, idempotency_key: str
    ) -> JobRow:
        """Record a PENDING job, its campaign and its discovery task; queue the task.

        Returns once committed (the idempotency lookup, the per-user limit and the inserts
        in one transaction); the task is published right after, without waiting on it."""
        return await self._submits.submit(user_id, config, idempotency_key)

    async def _transact(self, change: Change) -> list[Applied]:
        """Run ``change`` in a transaction, again if another replica changed a job first
        (optimistic locking); then publish what it caused."""

        def work(conn: Connection) -> list[Applied]:
            unit = Unit(conn)
            applied = change(unit)
            unit.flush()
            return applied

        for _ in range(STALE_RETRIES):
            try:
                applied = await self._writer.run(work)
                break
            except Conflict:
                continue  # read the job again
        else:
            raise RuntimeError("a job kept changing; giving up for now")
        await self._after_commit(*applied)
        return applied

    async def cancel(self, user_id: str, job_id: str) -> JobRow:
        """Cancel a PENDING or PROCESSING job; a finished one is FailedPrecondition."""
        rows: list[JobRow] = []

        def change(unit: Unit) -> list[Applied]:
            row = store.owned(unit.job(job_id), user_id, job_id)
            state = state_of(row)
            if state.status.terminal:
                raise FailedPrecondition(
                    f"job {job_id} is already {state.status.value}; only pending or "
                    "processing jobs can be cancelled"
                )
            rows.append(row)
            return [self._store(unit, row, m.transition(state, m.CancelRequested()), None)]

        await self._transact(change)
        return rows[-1]

    async def check_stalled(self) -> int:
        """Retry or fail every unfinished job that has not changed for STALL_TIMEOUT_S."""
        timeout = self._settings.stall_timeout_s
        cutoff = utcnow() - timedelta(seconds=timeout)
        query = (
            select(JOBS.c.id)
            .where(JOBS.c.status.in_(UNFINISHED), JOBS.c.updated_at < cutoff)
            .limit(100)
        )
        job_ids = await self._writer.read(lambda conn: list(conn.scalars(query).all()))

        def change(job_id: str) -> Change:
            def run(unit: Unit) -> list[Applied]:
                job = unit.job(job_id)
                if job is None or job.status not in UNFINISHED or job.updated_at >= cutoff:
                    return []  # it moved meanwhile
                idle = (utcnow() - job.updated_at).total_seconds()
                log.warning("job %s stalled in %s for %.0fs", job_id, job.stage, idle)
                result = m.transition(state_of(job), m.Stalled(idle))
                return [self._store(unit, job, result, None)]

            return run

        for job_id in job_ids:
            await self._transact(change(job_id))
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
        await self.apply_reports([report])

    async def apply_reports(self, reports: list[work_pb2.WorkerReport]) -> None:
        """Apply a batch of reports in one transaction (one commit, each job loaded once),
        falling back to one transaction per report if the batch meets a conflict."""
        try:
            await self._transact(lambda unit: self._apply_all(unit, reports))
        except IntegrityError:
            # Another replica applied one of these reports meanwhile.
            if len(reports) > 1:
                for report in reports:
                    await self.apply_report(report)

    def _apply_all(self, unit: Unit, reports: list[work_pb2.WorkerReport]) -> list[Applied]:
        # Three queries load what the batch will look at: which of its report ids (intents
        # included) were applied already, its jobs and the leads it is about.
        unit.load_applied(
            [r.report_id for r in reports] + [i.report_id for r in reports for i in r.intents]
        )
        unit.load_jobs(r.job_id for r in reports)
        lead_ids = {
            r.enrichment_result.lead_id or r.task_failure.lead_id or r.charges_only.lead_id
            for r in reports
        } - {""}
        unit.load_leads(lead_ids)
        done = []
        for report in reports:
            applied = self._apply(unit, report)
            if applied is not None:
                done.append(applied)
        return done

    def _apply(self, unit: Unit, report: work_pb2.WorkerReport) -> Applied | None:
        if report.report_id in unit.applied_ids:
            return None
        unit.mark_applied(report.report_id, report.job_id)
        job = unit.job(report.job_id)
        if job is None:
            log.warning("report %s for unknown job %s dropped", report.report_id, report.job_id)
            return None
        # Intents repeated on this report and not applied yet are applied with it (their
        # own copies will find their ids and change nothing).
        charges = list(report.charges)
        for intent in report.intents:
            if intent.report_id not in unit.applied_ids:
                unit.mark_applied(intent.report_id, report.job_id)
                charges.append(intent.charge)
        event = event_of(unit, job, report, charges)
        result = m.transition(state_of(job), event)
        return self._store(unit, job, result, report)

    def _store(
        self,
        unit: Unit,
        job: JobRow,
        result: m.Transition,
        report: work_pb2.WorkerReport | None,
    ) -> Applied:
        applied = Applied(job_id=job.id, stop_work=m.StopWork() in result.effects)
        if result.state is None:
            return applied
        for effect in result.effects:
            applied.outbox += self._carry_out(unit, job, result.state, effect, report)
        store_state(job, result.state, result.snapshots[-1].message, utcnow())
        if result.state.status.terminal:
            unit.update_campaign(job.campaign_id, status=job.status, completed_at=job.completed_at)
        unit.add_outbox(applied.outbox)
        applied.job, applied.snapshots = job, result.snapshots
        applied.stamp = report.published_at if report is not None else None
        return applied

    def _carry_out(
        self,
        unit: Unit,
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
                unit.add_leads(
                    transient(
                        LeadRow,
                        {
                            "id": new_id("lead"),
                            "campaign_id": job.campaign_id,
                            "job_id": job.id,
                            "place_id": p.place_id,
                            "rank": rank,
                            "business_name": p.name,
                            "address": p.address,
                            "phone": p.phone,
                            "website": p.website,
                            "rating": p.rating,
                            "review_count": p.review_count,
                            "confidence_score": p.confidence_score,
                            "email": "",
                            "email_status": "pending",
                            "state": "pending",
                            "cost_micros": shares[rank],
                            "cost_by_provider": (
                                {places_provider: shares[rank]} if shares[rank] else {}
                            ),
                            "from_cache": False,
                            "created_at": now,
                            "updated_at": now,
                        },
                    )
                    for rank, p in enumerate(places)
                )
            case m.ShareCost(micros=micros):
                leads = unit.leads_of(job.id)
                places_provider = state.metrics.providers.get("places", "places")
                for lead, share in zip(leads, _share(micros, max(1, len(leads))), strict=False):
                    add_costs(lead, {places_provider: share})
            case m.DispatchLeads(count=count, allowance_micros=allowance):
                pending = [lead for lead in unit.leads_of(job.id) if lead.state == "pending"]
                rows = []
                for lead in pending[:count]:
                    lead.state = "dispatched"
                    rows.append(enrichment_task_row(job, lead, allowance, state.attempts))
                return rows
            case m.SkipPendingLeads():
                for lead in unit.leads_of(job.id):
                    if lead.state == "pending":
                        lead.state = "skipped"
                        lead.email_status = "skipped_budget"
            case m.FinalizeCampaign():
                unit.update_campaign(
                    job.campaign_id,
                    results_count=state.metrics.qualified_leads,
                    total_cost_micros=state.metrics.total_cost_micros,
                    avg_confidence=state.metrics.avg_confidence,
                )
            case m.RetryDiscovery(attempt=attempt):
                return [discovery_task_row(job, attempt)]
            case m.RedispatchLeads():
                allowance = state.metrics.lead_price_micros if state.budget_micros else 0
                return [
                    enrichment_task_row(job, lead, allowance, state.attempts)
                    for lead in unit.leads_of(job.id)
                    if lead.state == "dispatched"
                ]
            case m.StopWork():
                pass  # after commit: see _after_commit
        return []

    async def _after_commit(self, *batch: Applied) -> None:
        """Publish what committed transactions caused: stop notices, the snapshots, then
        the queued tasks (all in one go, in the background: the outbox rows make them
        certain to go, and the next batch need not wait for JetStream's acks)."""
        for applied in batch:
            if applied.stop_work:
                await bus.CancelRegistry.announce(self._nc, self._js, applied.job_id)
        for job_id, updates in coalesced(batch):
            for update in updates:
                await self._fanout.publish(job_id, update)
        rows = [row for applied in batch for row in applied.outbox]
        if rows:
            self.outbox.publish_soon(rows)

    # The report consumer ----------------------------------------------------------------

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
