"""The report consumer: worker reports from the events stream, applied exactly once.

Reports come in partitions of the events stream, each read by one jobs replica at a time
(:mod:`services.jobs.partitions`), one pull loop per partition. Each fetch's reports are
applied in one transaction (each job loaded once, one commit). A message is acked only
after a commit that contains its report, so every report is either applied or still on the
stream. A report that breaks the rules of its shape (:func:`services.jobs.reports.check`),
or whose subject is not its job's, is refused on its own: logged once and terminated on the
stream. If a batch fails for any other reason, its reports are applied one by one, so one
report's trouble holds up nobody else's; a report that still fails is handed back with a
delay, and terminated (logged) at its last delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from prospect.v1 import work_pb2
from services.common import bus, tracing
from services.common.logs import job_context
from services.common.pull import pull_batches
from services.common.settings import Settings
from services.jobs import dispatched, metrics, reports
from services.jobs import machine as m
from services.jobs.changes import Changes, apply_event
from services.jobs.dispatched import PriceTable
from services.jobs.partitions import Membership
from services.jobs.publishing import Applied
from services.jobs.reports import BadReport
from services.jobs.unit import Unit

log = logging.getLogger(__name__)

# Reports fetched together at most: whatever has arrived, up to this many, applied in one
# transaction. On SQLite a transaction runs on the event loop's thread to its end (see
# services/jobs/db.py), so a larger batch would hold every watcher up for its length; on
# PostgreSQL the loop serves others while the transaction waits on the server, and each
# transaction costs a dozen round trips whatever its size, so batches may be larger: 128
# took a one-replica PostgreSQL run from 77 to 93 campaigns/s (bench: throughput).
REPORT_BATCH = 32
REPORT_BATCH_ASYNC = 128
RETRY_DELAY_S = 1.0


def _lead_ref(unit: Unit, job_id: str, lead_id: str) -> m.LeadRef | None:
    lead = unit.lead(lead_id) if lead_id else None
    if lead is None or lead.job_id != job_id:
        return None
    return m.LeadRef(lead.id, m.LeadState(lead.state))


def _apply_one(unit: Unit, report: work_pb2.WorkerReport, table: PriceTable) -> Applied | None:
    """Apply one checked report in ``unit``; None when it changes nothing.
    :class:`BadReport` when it is not about work this service dispatched, or claims more
    than that work could have done (nothing of it is applied then)."""
    if report.report_id in unit.applied_ids:
        return None  # applied before: its own id is recorded
    job = unit.job(report.job_id)
    cost, intents = reports.bookings(report, unit.applied_ids)
    task = unit.task(report.task_id)
    if job is None:
        raise BadReport(f"job {report.job_id} does not exist", reason="unknown_job")
    try:
        dispatched.check(report, task, cost.micros, job.config, table)
    except BadReport as exc:
        exc.reason = "not_dispatched"
        raise
    assert task is not None  # check refuses a report naming no recorded task
    late = dispatched.ended_before(task)
    dispatched.record(task, report, cost.micros)
    for report_id in (report.report_id, *intents):
        unit.mark_applied(report_id, report.job_id)
    lead = _lead_ref(unit, job.id, reports.lead_id_of(report))
    event = reports.money_of(report, cost, lead) if late else reports.read(report, cost, lead)
    applied, result = apply_event(unit, job, event)
    if result.refused:
        # Terminal means final: money arriving later is not added (see the README's
        # failure semantics for the bound this leaves between the books and the bill).
        level = logging.WARNING if cost.micros else logging.DEBUG
        log.log(level, "report %s refused: %s", report.report_id, result.refused)
    applied.stamp = report.published_at
    return applied


def apply_reports(
    unit: Unit,
    batch: list[work_pb2.WorkerReport],
    table: PriceTable,
    headers: Sequence[Mapping[str, str] | None] | None = None,
) -> list[Applied]:
    """Apply checked reports in one transaction's ``unit``, in order. With tracing on,
    ``headers`` are the reports' messages' (their trace context): each report is applied
    in its sender's context, so the tasks it queues and the job's end hang under the
    worker's task span (no span of its own: the batch applies many traces' reports in
    one transaction, and a span per report was most of what tracing cost the service)."""
    # Four queries load what the batch looks at: which of its report ids (intents
    # included) were applied already, its jobs, the tasks and the leads it is about.
    unit.load_applied(
        [r.report_id for r in batch] + [i.report_id for r in batch for i in r.intents]
    )
    unit.load_jobs(r.job_id for r in batch)
    unit.load_tasks(r.task_id for r in batch)
    unit.load_leads({reports.lead_id_of(r) for r in batch} - {""})
    # A discovery result stores its job's leads and dispatches the first of them, which
    # reads the job's whole list: one query for every such job of the batch, not one each.
    unit.load_leads_of(r.job_id for r in batch if r.WhichOneof("body") == "discovery_result")
    done = []
    for i, report in enumerate(batch):
        context = None if headers is None else headers[i]
        with job_context(report.job_id), tracing.continuing(context):
            applied = _apply_one(unit, report, table)
        if applied is not None:
            done.append(applied)
    return done


def _decode(msg: Msg) -> work_pb2.WorkerReport:
    """The checked report ``msg`` carries; :class:`BadReport` otherwise."""
    try:
        report = work_pb2.WorkerReport.FromString(msg.data)
    except DecodeError:
        raise BadReport("undecodable", reason="undecodable") from None
    reports.check(report)
    if bus.job_of_report_subject(msg.subject) != report.job_id:
        raise BadReport(
            f"published on {msg.subject[:80]}, not on its job's subject", reason="wrong_subject"
        )
    return report


def _headers(
    batch: list[tuple[Msg, work_pb2.WorkerReport]],
) -> list[Mapping[str, str] | None] | None:
    """The headers of the batch's messages when tracing is on (their trace context)."""
    return [msg.headers for msg, _ in batch] if tracing.enabled() else None


def consumers_of(partitions: frozenset[int]) -> set[str]:
    """The durable consumers a replica owning ``partitions`` reads (the owner of partition
    0 also drains what was published before the events stream had partitions)."""
    names = {bus.report_consumer(p) for p in partitions}
    if 0 in partitions:
        names.add(bus.LEGACY_REPORTS_CONSUMER)
    return names


class ReportConsumer:
    """One pull loop per owned partition feeds one applier: whatever the loops have
    fetched is applied together in one transaction (so a replica owning several partitions
    commits as few transactions as if it read one consumer), and each loop fetches again
    only once its messages have had their fate (so a job's reports keep their order)."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        changes: Changes,
        membership: Membership,
    ) -> None:
        self._settings = settings
        self._js = js
        self._changes = changes
        self._membership = membership
        self.prices = PriceTable.from_settings(settings)
        self._batch = REPORT_BATCH if changes.blocks_loop else REPORT_BATCH_ASYNC
        # Fetched batches waiting for the applier, each with the future its loop waits on.
        self._inbox: asyncio.Queue[tuple[list[Msg], asyncio.Future[None]]] = asyncio.Queue()

    async def run(self, stop: asyncio.Event) -> None:
        """Apply the reports of the partitions this replica owns, following them as they
        move, until ``stop``."""
        loops: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        applier = asyncio.create_task(self._apply_forever(), name="reports-applier")
        try:
            async for owned in self._membership.assignments(stop):
                wanted = consumers_of(owned)
                for name in set(loops) - wanted:
                    leave, task = loops.pop(name)
                    leave.set()
                    await task  # its batch under way is applied and acked first
                for name in sorted(wanted - set(loops)):
                    leave = asyncio.Event()
                    task = asyncio.create_task(self._fetch(name, leave), name=name)
                    loops[name] = (leave, task)
        finally:
            for leave, _ in loops.values():
                leave.set()
            await asyncio.gather(*(task for _, task in loops.values()), return_exceptions=True)
            applier.cancel()  # every loop has ended, so nothing waits on it any more
            with contextlib.suppress(asyncio.CancelledError):
                await applier

    async def _fetch(self, consumer: str, leave: asyncio.Event) -> None:
        """One partition's pull loop: hand each fetch to the applier and wait for it."""
        loop = asyncio.get_running_loop()
        while not leave.is_set():
            try:
                batches = pull_batches(
                    self._js, bus.EVENTS_STREAM, consumer, leave, lambda: self._batch
                )
                async for msgs in batches:
                    done: asyncio.Future[None] = loop.create_future()
                    await self._inbox.put((msgs, done))
                    await done
            except Exception:
                # Binding failed (NATS down at that moment): the loop must not die with it.
                log.exception("reading %s failed; starting again", consumer)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(leave.wait(), 1.0)

    async def _apply_forever(self) -> None:
        """Apply whatever the loops have fetched, all of it in one go, until cancelled."""
        while True:
            waiting = [await self._inbox.get()]
            while not self._inbox.empty():
                waiting.append(self._inbox.get_nowait())
            try:
                await self.take([msg for msgs, _ in waiting for msg in msgs])
            except Exception:
                log.exception(
                    "applying %d fetch(es) failed; their reports come again", len(waiting)
                )
            finally:
                for _, done in waiting:
                    if not done.done():
                        done.set_result(None)

    async def take(self, msgs: list[Msg]) -> None:
        """Apply the reports of one fetch and give every message its fate."""
        metrics.REPORT_BATCH_SIZE.observe(len(msgs))
        batch: list[tuple[Msg, work_pb2.WorkerReport]] = []
        for msg in msgs:
            try:
                batch.append((msg, _decode(msg)))
            except BadReport as exc:
                await self._refuse(msg, exc)
        if not batch:
            return
        try:
            await self.apply([report for _, report in batch], _headers(batch))
        except Exception as exc:
            if len(batch) == 1:
                await self._failed(*batch[0], exc)
                return
            log.info("a batch of %d reports failed (%r); applying them one by one", len(batch), exc)
            for msg, report in batch:
                await self._take_one(msg, report)
            return
        for msg, _ in batch:
            await msg.ack()

    async def apply(
        self,
        batch: list[work_pb2.WorkerReport],
        headers: Sequence[Mapping[str, str] | None] | None = None,
    ) -> None:
        """Apply checked reports in one change (committed when this returns)."""
        started = time.perf_counter()
        await self._changes.run(lambda unit: apply_reports(unit, batch, self.prices, headers))
        metrics.REPORT_APPLY.observe(time.perf_counter() - started)

    async def _take_one(self, msg: Msg, report: work_pb2.WorkerReport) -> None:
        try:
            await self.apply([report], _headers([(msg, report)]))
        except Exception as exc:
            await self._failed(msg, report, exc)
            return
        await msg.ack()

    async def _refuse(self, msg: Msg, exc: BadReport) -> None:
        log.error("report on %s refused: %s", msg.subject[:80], exc)
        metrics.report_refused(exc.reason)
        with contextlib.suppress(Exception):
            await msg.term()

    async def _failed(self, msg: Msg, report: work_pb2.WorkerReport, exc: Exception) -> None:
        with job_context(report.job_id):  # checked: a job id
            if isinstance(exc, BadReport):
                await self._refuse(msg, exc)
                return
            delivery = msg.metadata.num_delivered
            if delivery >= self._settings.max_deliver:
                log.error(
                    "report %s of job %s dropped after %d failed deliveries: %r",
                    report.report_id, report.job_id, delivery, exc,
                )  # fmt: skip
                metrics.report_refused("failed")
                with contextlib.suppress(Exception):
                    await msg.term()
                return
            log.warning("report %s not applied (%r); will retry", report.report_id, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY_S * delivery)
