"""The watchdog: no job stays unfinished forever.

A PENDING or PROCESSING job with no change for STALL_TIMEOUT_S is retried (discovery again,
or its unsettled leads queued again) or, out of attempts, FAILED. Only when its work is
neither queued nor reported, though: while tasks wait in its stage's work queue or run, a
quiet job is waiting its turn, not stuck; while reports about it wait on the events stream
(held up by an outage of NATS or of the report consumers), its work is done and they will
move it. Queueing its work again would only run it twice and pay twice, and the money of
the first run would reach the books late: after the job had ended, if it ended first (a
cancel), so never. A CANCELLING or FAILING job whose work under way has not all reported
within STOP_TIMEOUT_S of the stop becomes final all the same, unless reports about it are
still waiting on the events stream: those say what its work cost, so it becomes final once
they are applied.

Each round asks the work queues first, then the events stream, then re-reads the job in
the change's transaction: a task is acked only after its report is on the stream, and a
report leaves the stream only once applied (which changes the job), so work that moves
between the three is seen in one of them.

Waiting for reports is bounded: a report still on the stream ``MAX_DELIVER`` times
``ACK_WAIT_S`` past the timeout may have used up its deliveries (JetStream then keeps it
but delivers it no more), so the job is retried or made final without it, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from sqlalchemy import select

from services.common import bus
from services.common.logs import job_context
from services.common.settings import Settings
from services.jobs import machine as m
from services.jobs import metrics
from services.jobs.changes import Changes, apply_event
from services.jobs.db import Writer
from services.jobs.models import JobRow, utcnow
from services.jobs.publishing import Applied
from services.jobs.unit import ACTIVE, JOBS, STOPPING, Unit

log = logging.getLogger(__name__)

BATCH = 100


# The work queue each stage's tasks wait in.
_QUEUE_OF_STAGE = {
    m.Stage.QUEUED: bus.DISCOVERY_CONSUMER,
    m.Stage.DISCOVERING: bus.DISCOVERY_CONSUMER,
    m.Stage.ENRICHING: bus.ENRICHMENT_CONSUMER,
}


def _queued(stage: str, busy: set[str]) -> bool:
    """Whether a job in ``stage`` has its work waiting in one of the ``busy`` queues."""
    return _QUEUE_OF_STAGE.get(m.Stage(stage)) in busy


class Watchdog:
    def __init__(
        self, settings: Settings, writer: Writer, changes: Changes, js: JetStreamContext
    ) -> None:
        self._settings = settings
        self._writer = writer
        self._changes = changes
        self._js = js
        # How long past a timeout a job waits for its reports at most (see the docstring).
        self._reports_wait_s = settings.max_deliver * settings.ack_wait_s

    async def _busy_queues(self) -> set[str]:
        """The work consumers with tasks waiting or running (all of them when NATS does
        not answer: better to wait than to run a job's work twice)."""
        busy = set()
        for consumer in (bus.DISCOVERY_CONSUMER, bus.ENRICHMENT_CONSUMER):
            try:
                info = await self._js.consumer_info(bus.WORK_STREAM, consumer)
            except Exception:
                busy.add(consumer)
                continue
            if (info.num_pending or 0) + (info.num_ack_pending or 0) > 0:
                busy.add(consumer)
        return busy

    async def _reports_waiting(self, job_ids: list[str]) -> set[str]:
        """The jobs among ``job_ids`` with reports still on the events stream (a
        work-queue stream: what it holds is not applied yet); all of them when NATS does
        not answer."""
        waiting = set()
        for job_id in job_ids:
            try:
                info = await self._js.stream_info(
                    bus.EVENTS_STREAM, subjects_filter=f"prospect.events.*.{job_id}"
                )
            except Exception:
                waiting.add(job_id)
                continue
            if any(info.state.subjects.values() if info.state.subjects else ()):
                waiting.add(job_id)
        return waiting

    async def _each(
        self,
        statuses: tuple[str, ...],
        since: Callable[[JobRow], datetime | None],
        column: str,
        timeout_s: float,
        event: Callable[[float], m.Event],
        *,
        unless_queued: bool = False,
        unless_reporting: bool = False,
    ) -> int:
        """Apply ``event(seconds waited)`` to every job in ``statuses`` whose ``column``
        is older than ``timeout_s``, each in its own change (re-checked inside it); with
        ``unless_queued``, not to a job whose stage's work queue is busy; with
        ``unless_reporting``, not to a job with reports waiting to be applied (for at most
        MAX_DELIVER x ACK_WAIT_S more). How many were found."""
        cutoff = utcnow() - timedelta(seconds=timeout_s)
        query = (
            select(JOBS.c.id, JOBS.c.stage)
            .where(JOBS.c.status.in_(statuses), JOBS.c[column] < cutoff)
            .limit(BATCH)
        )
        found = await self._writer.read(lambda conn: [(i, s) for i, s in conn.execute(query)])
        job_ids = [job_id for job_id, _ in found]
        # Asked of JetStream once a round, and only when a job was found.
        busy = await self._busy_queues() if unless_queued and job_ids else set()
        # The stream is asked per job: not about those their busy queue already excuses.
        free = [job_id for job_id, stage in found if not _queued(stage, busy)]
        reporting = await self._reports_waiting(free) if unless_reporting else set()

        def change(job_id: str) -> Callable[[Unit], list[Applied]]:
            def run(unit: Unit) -> list[Applied]:
                job = unit.job(job_id)
                moment = since(job) if job is not None else None
                if job is None or job.status not in statuses or moment is None:
                    return []
                if moment >= cutoff:
                    return []  # it moved meanwhile
                waited = (utcnow() - moment).total_seconds()
                if _queued(job.stage, busy):
                    log.info("job %s quiet for %.0fs: its tasks are queued", job_id, waited)
                    return []
                if job_id in reporting:
                    if waited < timeout_s + self._reports_wait_s:
                        log.info("job %s quiet for %.0fs: its reports are waiting", job_id, waited)
                        return []
                    log.warning(
                        "job %s: reports about it have waited on the events stream for "
                        "%.0fs past its timeout: going on without them", job_id,
                        waited - timeout_s,
                    )  # fmt: skip
                log.warning("job %s: %s in %s for %.0fs", job_id, job.status, job.stage, waited)
                applied, _ = apply_event(unit, job, event(waited))
                return [applied]

            return run

        for job_id in job_ids:
            with job_context(job_id):
                applied = await self._changes.run(change(job_id))
            if applied and event is m.Stalled:
                metrics.JOBS_STALLED.inc()
        return len(job_ids)

    async def check_stalled(self) -> int:
        """Retry or fail every active job unchanged for STALL_TIMEOUT_S whose work queue
        is idle and with no report about it waiting; how many were found stalled."""
        return await self._each(
            ACTIVE, lambda job: job.updated_at, "updated_at", self._settings.stall_timeout_s,
            m.Stalled, unless_queued=True, unless_reporting=True,
        )  # fmt: skip

    async def check_stopping(self) -> int:
        """Finish every job stopping for longer than STOP_TIMEOUT_S with no report about
        it waiting to be applied; how many were found."""
        return await self._each(
            STOPPING, lambda job: job.stopping_since, "stopping_since",
            self._settings.stop_timeout_s, m.StopTimedOut, unless_reporting=True,
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Check now and then until ``stop``."""
        s = self._settings
        interval = min(30.0, s.stall_timeout_s / 4, s.stop_timeout_s / 4)
        while not stop.is_set():
            try:
                await self.check_stopping()
                await self.check_stalled()
            except Exception:
                log.exception("watchdog check failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
