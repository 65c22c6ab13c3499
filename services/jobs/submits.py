"""SubmitCampaign's write: group commit.

Each submit is one small transaction (the idempotency lookup, the per-user limit, three
inserts), and a transaction's fixed cost (begin, statements, commit) outweighs its rows.
So submits queue here, a batch waits a millisecond for company, and one transaction takes
them all, with the same checks per submit. The caller is
answered once its job is committed; the discovery task is published right after, without
the caller waiting on JetStream (the row in the outbox makes it certain to go).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from prospect.v1 import jobs_pb2
from services.common import tracing
from services.common.errors import AlreadyExists, Reason, ResourceExhausted
from services.common.settings import Settings
from services.jobs import history, metrics
from services.jobs import machine as m
from services.jobs.convert import config_from_json, config_to_json
from services.jobs.db import Writer
from services.jobs.models import CampaignRow, JobRow, OutboxRow, transient, utcnow
from services.jobs.outbox import Outbox
from services.jobs.tasks import new_id, queue_discovery
from services.jobs.unit import Unit

log = logging.getLogger(__name__)

# Submits written in one transaction at most.
SUBMIT_BATCH = 64
# How long a batch waits for more submits to join it: with 8 clients, batches of about 3
# instead of 1, and about 60% more submits per second (`make bench`).
COLLECT_S = 0.001
# A batch that collides with another replica on an idempotency key is read again this often.
KEY_RACE_RETRIES = 3


@dataclass
class _Submit:
    user_id: str
    config: jobs_pb2.CampaignConfig
    key: str
    # The submit's span (services/common/tracing.py), the root of the campaign's trace.
    trace_context: str | None = None
    schedule_id: str | None = None  # a schedule's fire (services/jobs/scheduler.py)
    answer: asyncio.Future[JobRow] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Submits:
    def __init__(self, settings: Settings, writer: Writer, outbox: Outbox) -> None:
        self._settings = settings
        self._writer = writer
        self._outbox = outbox
        self._queue: list[_Submit] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(
        self, user_id: str, config: jobs_pb2.CampaignConfig, idempotency_key: str
    ) -> JobRow:
        request = _Submit(user_id, config, idempotency_key, tracing.current_traceparent())
        self._queue.append(request)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._write_queued())
        return await asyncio.shield(request.answer)

    async def _write_queued(self) -> None:
        # Written for many submits: each job's task continues its own submit's trace.
        with tracing.detached():
            await self._write_all_queued()

    async def _write_all_queued(self) -> None:
        while self._queue:
            # Requests reach their handler one by one (each takes gRPC a few passes of
            # the event loop), so without a moment's wait every batch would hold one.
            if len(self._queue) < SUBMIT_BATCH:
                await asyncio.sleep(COLLECT_S)
            batch, self._queue = self._queue[:SUBMIT_BATCH], self._queue[SUBMIT_BATCH:]
            try:
                await self._write_batch(batch)
            except Exception as exc:
                for request in batch:
                    if not request.answer.done():
                        request.answer.set_exception(exc)

    async def _write_batch(self, batch: list[_Submit]) -> None:
        def work(conn: Connection) -> tuple[list[JobRow | Exception], list[OutboxRow]]:
            return self._record(Unit(conn), batch)

        for attempt in range(KEY_RACE_RETRIES):
            try:
                answers, rows = await self._writer.run(work)
                break
            except IntegrityError:
                # A key raced in from another replica: the next read finds its job.
                if attempt == KEY_RACE_RETRIES - 1:
                    raise
        for request, answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                request.answer.set_exception(answer)
            else:
                request.answer.set_result(answer)
        if rows:
            metrics.JOBS_SUBMITTED.inc(len(rows))  # one discovery task per new job
            self._outbox.publish_soon(rows)

    def record_fire(
        self, unit: Unit, user_id: str, config: jobs_pb2.CampaignConfig, schedule_id: str
    ) -> tuple[JobRow | Exception, list[OutboxRow]]:
        """A schedule's fire as a submit of ``user_id``, in the caller's transaction
        ``unit``: the same checks and rows as SubmitCampaign's, the job linked to
        ``schedule_id``. The caller publishes the rows after its commit (:meth:`committed`)."""
        request = _Submit(
            user_id, config, "", tracing.current_traceparent(), schedule_id=schedule_id
        )
        request.answer.cancel()  # answered by the return value, never awaited
        answers, rows = self._record(unit, [request])
        return answers[0], rows

    def committed(self, rows: list[OutboxRow]) -> None:
        """Rows of :meth:`record_fire` whose transaction committed: counted and published."""
        if rows:
            metrics.JOBS_SUBMITTED.inc(len(rows))
            self._outbox.publish_soon(rows)

    def _record(
        self, unit: Unit, batch: list[_Submit]
    ) -> tuple[list[JobRow | Exception], list[OutboxRow]]:
        """Check and insert each submit of ``batch``; its answers and the rows to publish.

        A (user, idempotency key) already used answers its first job when the config is the
        same, and :class:`AlreadyExists` when it is not; within the batch as across it."""
        limit = self._settings.max_active_jobs_per_user
        known = unit.jobs_by_keys((r.user_id, r.key) for r in batch if r.key)
        active = unit.active_jobs(r.user_id for r in batch)
        answers: list[JobRow | Exception] = []
        rows: list[OutboxRow] = []
        for request in batch:
            existing = known.get((request.user_id, request.key)) if request.key else None
            if existing is not None:
                answers.append(_answer_for_known_key(existing, request))
                continue
            if active[request.user_id] >= limit:
                answers.append(active_job_limit(request.user_id, active[request.user_id], limit))
                continue
            job, campaign = self._new_job(request)
            unit.add_job(job, campaign)
            entry = history.submitted(job, submitted_message(job))
            history.record(unit, job.id, [entry], job.created_at)
            task = queue_discovery(unit, job, attempt=1)
            unit.add_outbox([task])
            rows.append(task)
            active[request.user_id] += 1
            if request.key:
                known[(request.user_id, request.key)] = job
            answers.append(job)
        unit.flush()
        return answers, rows

    def _new_job(self, request: _Submit) -> tuple[JobRow, CampaignRow]:
        now = utcnow()
        job_id, campaign_id = new_id("job"), new_id("cmp")
        job = transient(
            JobRow,
            {
                "id": job_id,
                "campaign_id": campaign_id,
                "user_id": request.user_id,
                "type": "campaign",
                "status": m.Status.PENDING.value,
                "stage": m.Stage.QUEUED.value,
                "progress": 0,
                "version": 1,
                "config": config_to_json(request.config),
                "metrics": m.Metrics().to_json(),
                "error": "",
                "message": "Queued",
                "attempts": 1,
                "max_attempts": self._settings.job_max_attempts,
                "idempotency_key": request.key or None,
                "created_at": now,
                "started_at": None,
                "completed_at": None,
                "updated_at": now,
                "stopping_since": None,
                "trace_context": request.trace_context,
                "schedule_id": request.schedule_id,
            },
        )
        campaign = new_campaign(
            campaign_id, job, request.config.business_type, request.config.location
        )
        return job, campaign


def new_campaign(campaign_id: str, job: JobRow, business_type: str, location: str) -> CampaignRow:
    """The campaign row of a new ``job`` (as SubmitCampaign and RetryJob make one)."""
    return transient(
        CampaignRow,
        {
            "id": campaign_id,
            "job_id": job.id,
            "user_id": job.user_id,
            "business_type": business_type,
            "location": location,
            "status": job.status,
            "results_count": 0,
            "total_cost_micros": 0,
            "avg_confidence": 0.0,
            "created_at": job.created_at,
            "completed_at": None,
        },
    )


def active_job_limit(user_id: str, active: int, limit: int) -> ResourceExhausted:
    """The error of a new job for ``user_id``, who has ``active`` unfinished of ``limit``."""
    return ResourceExhausted(
        f"{active} unfinished jobs: at most {limit} at once (MAX_ACTIVE_JOBS_PER_USER)",
        reason=Reason.ACTIVE_JOB_LIMIT,
        subject=f"user:{user_id}",  # the owner's, whoever submits
        quota=f"at most {limit} unfinished jobs per user (MAX_ACTIVE_JOBS_PER_USER)",
        metadata={"setting": "MAX_ACTIVE_JOBS_PER_USER", "limit": str(limit)},
    )


def submitted_message(job: JobRow) -> str:
    """The first entry of ``job``'s history, in words."""
    config = job.config
    return f"Submitted: {config.get('business_type', '')} in {config.get('location', '')}"


def _answer_for_known_key(existing: JobRow, request: _Submit) -> JobRow | AlreadyExists:
    """``existing`` when ``request`` repeats the submit that made it; otherwise the error.

    Answering the first job to a different config would tell the caller their campaign
    was accepted when another one runs in its place.
    """
    # Both through the message, so a config stored before a field was added still matches.
    if config_to_json(config_from_json(existing.config)) == config_to_json(request.config):
        return existing
    return AlreadyExists(
        f"idempotency_key {request.key!r} was used for job {existing.id} with a different "
        "config; use a new key",
        metadata={"idempotency_key": request.key, "job_id": existing.id},
    )
