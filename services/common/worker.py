"""What both workers share: running tasks off a durable consumer (the one pull loop of
services.common.pull), heartbeats, reporting, metering and allowances, and the process
start-up around them.

Each message's fate is explicit (nats.py style): the handler acks after its report is
published, naks with a delay to retry, or terms a message that can never succeed. While a
handler runs, ``in_progress()`` heartbeats keep JetStream from redelivering a live task.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import nats.errors
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from prospect.v1 import work_pb2
from services.common import bus, gc_freeze, metrics, tracing, worker_metrics
from services.common.allowance import Allowance
from services.common.errors import ConfigError
from services.common.health import HealthServer
from services.common.logs import bind_job, lifecycle, setup_logging
from services.common.providers import Charge, Providers, open_providers
from services.common.providers.metering import Meter, charge_proto, current_meter
from services.common.pull import pull_batches
from services.common.settings import Settings
from services.common.signals import stop_on_signals
from services.common.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
# The stage of a job each kind of task works for (a task span's prospect.stage).
TASK_STAGES = {"discovery": "DISCOVERING", "enrichment": "ENRICHING"}
T = TypeVar("T", work_pb2.DiscoveryTask, work_pb2.EnrichmentTask)


def retry_delay(delivery: int, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for the ``delivery``-th attempt (1-based)."""
    return random.uniform(base / 2, min(cap, base * 2 ** (delivery - 1)))


def charges_proto(charges: list[Charge]) -> list[work_pb2.Charge]:
    return [charge_proto(c) for c in charges]


def stamp(report: work_pb2.WorkerReport) -> work_pb2.WorkerReport:
    """Set ``report.published_at`` to now; returns the report."""
    now = Timestamp()
    now.FromNanoseconds(time.time_ns())
    report.published_at.CopyFrom(now)
    return report


async def publish_report(js: JetStreamContext, report: work_pb2.WorkerReport) -> None:
    """Stamp and publish a report, waiting for the events stream's ack; its report_id is
    the Nats-Msg-Id."""
    stamp(report)
    await bus.publish_proto(js, bus.events_subject(report.job_id), report, report.report_id)
    worker_metrics.record_spend(report)


def add_charges(report: work_pb2.WorkerReport, meter: Meter, charges: list[Charge]) -> None:
    """Put on ``report`` what it must carry for ``charges`` (see Meter.reportable)."""
    reportable, intents = meter.reportable(charges)
    report.charges.extend(charges_proto(reportable))
    report.intents.extend(intents)


def start_meter(
    nc: NATS,
    cancels: bus.CancelRegistry,
    job_id: str,
    report_prefix: str,
    attempt: int,
    lead_id: str = "",
    task_id: str = "",
) -> Meter:
    """A meter for the running task: each paid request's intent is a report of its own
    (``<report_prefix>.call<n>``), published at the request's slot without waiting for an
    ack, and no request leaves once the job is cancelled or failed."""
    numbers = itertools.count(1)
    subject = bus.events_subject(job_id)

    async def publish_intent(charge: Charge) -> str:
        note = f"{charge.provider} {charge.operation} under way"
        report = work_pb2.WorkerReport(
            report_id=f"{report_prefix}.call{next(numbers)}",
            job_id=job_id,
            attempt=attempt,
            task_id=task_id,
            charges=charges_proto([charge]),
            charges_only=work_pb2.ChargesOnly(note=note, lead_id=lead_id),
        )
        try:
            await bus.publish_proto_no_ack(nc, subject, stamp(report), report.report_id)
        except nats.errors.Error as exc:
            # The copy on the task's next report puts the request on the books.
            log.warning("intent %s not published: %r", report.report_id, exc)
        return report.report_id

    meter = Meter(publish_intent, stopped=lambda: cancels.is_cancelled(job_id))
    current_meter.set(meter)
    return meter


class TaskRunner:
    """Runs ``handler`` on messages of one durable pull consumer, ``concurrency`` at a time."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        consumer: str,
        handler: Handler,
        concurrency: int,
        heartbeat_s: float,
    ) -> None:
        self._js = js
        self._stream = stream
        self._consumer = consumer
        self._handler = handler
        self._concurrency = concurrency
        self._heartbeat_s = heartbeat_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, grace: float) -> None:
        """Pull and run tasks until ``stop``; then give those in flight ``grace`` seconds
        and cancel the rest (each is handed back with a nak)."""
        stopping = asyncio.ensure_future(stop.wait())
        batches = pull_batches(self._js, self._stream, self._consumer, stop, self._free)
        try:
            async for msgs in batches:
                for msg in msgs:
                    task = asyncio.create_task(self._run_one(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                # Every slot busy: no fetch until one frees up, or SIGTERM.
                while self._free() <= 0 and not stop.is_set():
                    busy = {*self._tasks, stopping}
                    await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        # Shutdown: no new fetches; give in-flight tasks the grace period.
        if self._tasks:
            log.info("waiting for %d in-flight task(s)", len(self._tasks))
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()

    def _free(self) -> int:
        """Tasks that may start now."""
        return self._concurrency - len(self._tasks)

    async def _run_one(self, msg: Msg) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            await self._handler(msg)
        except asyncio.CancelledError:
            # Out of grace: hand the task back so another replica takes it at once.
            with contextlib.suppress(Exception):
                await msg.nak(delay=0.5)
            raise
        except Exception:
            log.exception("task on %s failed unexpectedly; will retry", msg.subject)
            worker_metrics.task_ended(self._consumer, "retried")
            with contextlib.suppress(Exception):
                await msg.nak(delay=retry_delay(msg.metadata.num_delivered))
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()


class TaskWorker(Generic[T]):
    """Base of the two workers: what a worker needs, where its tasks come from, and what
    happens to every task before the work: undecodable ones are termed, those of a
    cancelled (or failed) job reported stopped, acked and dropped.

    Every report a worker publishes says the task's attempt; its id is deterministic per
    task delivery (from :meth:`delivery_id`), so the jobs service applies it once."""

    name: str  # "discovery" or "enrichment"
    consumer: str  # the durable consumer on the work stream
    task_type: type[T]
    _allowances: KeyValue  # the spend ledgers (opened by start)

    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        cancels: bus.CancelRegistry,
        providers: Providers,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._js = js
        self._cancels = cancels
        self._providers = providers

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        """Tasks this worker runs at once."""
        raise NotImplementedError

    def delivery_id(self, task: T, delivery: int) -> str:
        """The prefix of every report id of the ``delivery``-th delivery of ``task``."""
        raise NotImplementedError

    def lead_of(self, task: T) -> str:
        """The lead ``task`` is about, "" when none (discovery)."""
        return ""

    def provider_names(self) -> dict[str, str]:
        """Capability -> provider name, for the worker's reports."""
        raise NotImplementedError

    async def start(self) -> None:
        """Open what the worker needs beyond the constructor's (before the first task);
        an override calls this first."""
        self._allowances = await bus.open_bucket(self._js, bus.ALLOWANCE_BUCKET)

    async def handle(self, msg: Msg) -> None:
        started = time.monotonic()
        try:
            try:
                task = self.task_type.FromString(msg.data)
            except DecodeError:
                log.error("undecodable %s task dropped", self.name)
                await msg.term()
                self.task_ended("failed")
                return
            bind_job(task.job_id)  # the rest of this task's coroutine works for this job
            # A child of the span that queued the task (its message's trace context).
            with tracing.span(
                f"{self.name} task", kind=tracing.CONSUMER, parent=msg.headers,
                attributes=self._span_attributes(task),
            ):  # fmt: skip
                await self._handle(task, msg)
        finally:
            worker_metrics.TASK_DURATION.labels(self.name).observe(time.monotonic() - started)

    def _span_attributes(self, task: T) -> dict[str, str | int] | None:
        """What the task's span says (none when tracing is off)."""
        if not tracing.enabled():
            return None
        return {
            tracing.JOB_ID: task.job_id,
            tracing.STAGE: TASK_STAGES[self.name],
            tracing.ATTEMPT: task.attempt,
        }

    async def _handle(self, task: T, msg: Msg) -> None:
        if await self._cancels.refresh(task.job_id):
            # Queued task of a stopped job: say so (the job waits for every task's word
            # before it ends), then drop it.
            report_id = f"{self.delivery_id(task, msg.metadata.num_delivered)}.stopped"
            report = self.new_report(task, report_id)
            note = f"{self.name} task dropped: the job is stopped"
            stopped = work_pb2.TaskStopped(lead_id=self.lead_of(task), note=note)
            report.task_stopped.CopyFrom(stopped)
            await publish_report(self._js, report)
            await msg.ack()
            self.task_ended("cancelled")
            return
        await self.run(task, msg)

    async def run(self, task: T, msg: Msg) -> None:
        """Do one task; ack, nak with a delay, or term its message, and say which
        (:meth:`task_ended`)."""
        raise NotImplementedError

    def task_ended(self, outcome: str) -> None:
        """This delivery ended ``outcome``: done (acked with its result), retried (handed
        back), failed (reported as failed) or cancelled (its job stopped)."""
        worker_metrics.task_ended(self.name, outcome)

    def new_report(self, task: T, report_id: str) -> work_pb2.WorkerReport:
        """A report about ``task`` without a body: its job, attempt and providers."""
        return work_pb2.WorkerReport(
            report_id=report_id,
            job_id=task.job_id,
            attempt=task.attempt,
            task_id=task.task_id,
            providers=self.provider_names(),
        )

    def start_meter(self, task: T, report_prefix: str) -> Meter:
        """The meter of one delivery of ``task`` (see :func:`start_meter`)."""
        return start_meter(
            self._nc,
            self._cancels,
            task.job_id,
            report_prefix,
            task.attempt,
            self.lead_of(task),
            task.task_id,
        )

    def allowance(self, key: str, cap_micros: int) -> Allowance:
        """The spend ledger ``key`` with budget ``cap_micros`` (0: no budget)."""
        return Allowance(self._allowances, key, cap_micros)


def worker_main(kind: type[TaskWorker]) -> None:
    """Entry point of a worker process: settings, logging, NATS, the loop, SIGTERM."""
    settings = Settings.load_or_exit()
    setup_logging(settings.log_level, kind.name, settings.log_format)
    metrics_server = metrics.MetricsServer(settings.metrics_addr, kind.name)
    try:
        metrics_server.start()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        raise SystemExit(2) from None
    setup_tracing(kind.name)
    try:
        asyncio.run(_serve(kind, settings))
    finally:
        metrics_server.stop()
        shutdown_tracing()


async def _serve(kind: type[TaskWorker], settings: Settings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await _work(kind, settings, stop)


async def _work(kind: type[TaskWorker], settings: Settings, stop: asyncio.Event) -> None:
    health = HealthServer(settings.health_grpc_addr)
    await health.start()
    nc = await bus.connect(settings, f"prospect-{kind.name}")
    js = nc.jetstream()
    # The jobs service makes the topology; a worker may only use its part of it.
    await bus.wait_for_consumer(js, bus.WORK_STREAM, kind.consumer)
    lag = metrics.consumer_lag(js, bus.WORK_STREAM, [kind.consumer])
    refreshing = asyncio.create_task(metrics.refresh_every(lag, stop), name="metrics")
    cancels = await bus.CancelRegistry.open(nc, js)
    providers = await open_providers(settings, js)
    worker = kind(settings, nc, js, cancels, providers)
    await worker.start()
    log.info("providers: %s", ", ".join(f"{k}={v}" for k, v in providers.names().items()))
    concurrency = kind.concurrency(settings)
    runner = TaskRunner(
        js, bus.WORK_STREAM, kind.consumer, worker.handle, concurrency, settings.ack_wait_s / 3
    )
    await health.serving()
    gc_freeze.settle()
    lifecycle.info(
        "%s worker ready (consumer %s, %d at a time)", kind.name, kind.consumer, concurrency
    )
    await runner.run(stop, settings.shutdown_grace_s)
    refreshing.cancel()
    await health.stop()
    # Every publish was already acknowledged and no fetch is outstanding, so a plain close
    # loses nothing (drain would wait for the pull subscriptions' idle inboxes).
    await providers.aclose()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)
    lifecycle.info("%s worker stopped", kind.name)
