"""What both workers share: the pull loop over a durable consumer, heartbeats, reporting,
and the process start-up around them.

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
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from prospect.v1 import work_pb2
from services.common import bus, heap
from services.common.health import HealthServer
from services.common.logs import lifecycle, setup_logging
from services.common.providers import Charge, Providers, open_providers
from services.common.providers.metering import Meter, current_meter
from services.common.settings import Settings
from services.common.signals import stop_on_signals

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
T = TypeVar("T", bound=Message)


def retry_delay(delivery: int, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for the ``delivery``-th attempt (1-based)."""
    return random.uniform(base / 2, min(cap, base * 2 ** (delivery - 1)))


def charges_proto(charges: list[Charge]) -> list[work_pb2.Charge]:
    return [
        work_pb2.Charge(provider=c.provider, operation=c.operation, cost_usd=c.cost_usd)
        for c in charges
    ]


async def publish_report(js: JetStreamContext, report: work_pb2.WorkerReport) -> None:
    """Stamp and publish a report; its report_id is the Nats-Msg-Id."""
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    report.published_at.CopyFrom(stamp)
    await bus.publish_proto(js, bus.events_subject(report.job_id), report, report.report_id)


def add_charges(report: work_pb2.WorkerReport, meter: Meter, charges: list[Charge]) -> None:
    """Put on ``report`` what it must carry for ``charges`` (see Meter.reportable)."""
    reportable, intents = meter.reportable(charges)
    report.charges.extend(charges_proto(reportable))
    report.intents.extend(
        work_pb2.Intent(report_id=report_id, charge=charges_proto([charge])[0])
        for report_id, charge in intents
    )


def start_meter(
    js: JetStreamContext,
    cancels: bus.CancelRegistry,
    job_id: str,
    report_prefix: str,
    lead_id: str = "",
) -> Meter:
    """A meter for the running task: each paid call's intent is published as a report of
    its own (``<report_prefix>.call<n>``) before the call is made, and no call is made once
    the job is cancelled or failed."""
    numbers = itertools.count(1)

    async def publish_intent(charge: Charge) -> str:
        note = f"{charge.provider} {charge.operation} under way"
        report = work_pb2.WorkerReport(
            report_id=f"{report_prefix}.call{next(numbers)}",
            job_id=job_id,
            charges=charges_proto([charge]),
            charges_only=work_pb2.ChargesOnly(note=note, lead_id=lead_id),
        )
        await publish_report(js, report)
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
        psub = await self._js.pull_subscribe_bind(self._consumer, self._stream)
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                # Every slot busy: wait for one to free up, or for SIGTERM.
                await asyncio.wait({*self._tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await psub.fetch(free, timeout=1.0)
            except nats.errors.TimeoutError:
                continue  # idle, not an error
            except Exception as exc:  # disconnected: the client reconnects by itself
                log.warning("fetch from %s failed: %r", self._consumer, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._run_one(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        stopping.cancel()
        # Shutdown: no new fetches; give in-flight tasks the grace period.
        if self._tasks:
            log.info("waiting for %d in-flight task(s)", len(self._tasks))
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()

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
    cancelled job acked and dropped."""

    name: str  # "discovery" or "enrichment"
    consumer: str  # the durable consumer on the work stream
    task_type: type[T]

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        cancels: bus.CancelRegistry,
        providers: Providers,
    ) -> None:
        self._settings = settings
        self._js = js
        self._cancels = cancels
        self._providers = providers

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        """Tasks this worker runs at once."""
        raise NotImplementedError

    async def start(self) -> None:
        """Open what the worker needs beyond the constructor's (before the first task)."""

    async def handle(self, msg: Msg) -> None:
        try:
            task = self.task_type.FromString(msg.data)
        except DecodeError:
            log.error("undecodable %s task dropped", self.name)
            await msg.term()
            return
        if await self._cancels.refresh(task.job_id):  # type: ignore[attr-defined]
            await msg.ack()  # queued task of a cancelled job: drop it
            return
        await self.run(task, msg)

    async def run(self, task: T, msg: Msg) -> None:
        """Do one task; ack, nak with a delay, or term its message."""
        raise NotImplementedError


def worker_main(kind: type[TaskWorker]) -> None:
    """Entry point of a worker process: settings, logging, NATS, the loop, SIGTERM."""
    settings = Settings.load_or_exit()
    setup_logging(settings.log_level, kind.name)
    asyncio.run(_serve(kind, settings))


async def _serve(kind: type[TaskWorker], settings: Settings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await _work(kind, settings, stop)


async def _work(kind: type[TaskWorker], settings: Settings, stop: asyncio.Event) -> None:
    health = HealthServer(settings.health_grpc_addr)
    await health.start()
    nc = await bus.connect(settings, f"prospect-{kind.name}")
    js = nc.jetstream()
    await bus.ensure_topology(js, settings)
    cancels = await bus.CancelRegistry.open(nc, js)
    providers = await open_providers(settings, js)
    worker = kind(settings, js, cancels, providers)
    await worker.start()
    log.info("providers: %s", ", ".join(f"{k}={v}" for k, v in providers.names().items()))
    concurrency = kind.concurrency(settings)
    runner = TaskRunner(
        js, bus.WORK_STREAM, kind.consumer, worker.handle, concurrency, settings.ack_wait_s / 3
    )
    await health.serving()
    heap.settle()
    lifecycle.info(
        "%s worker ready (consumer %s, %d at a time)", kind.name, kind.consumer, concurrency
    )
    await runner.run(stop, settings.shutdown_grace_s)
    await health.stop()
    # Every publish was already acknowledged and no fetch is outstanding, so a plain close
    # loses nothing (drain would wait for the pull subscriptions' idle inboxes).
    await providers.aclose()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)
    lifecycle.info("%s worker stopped", kind.name)
