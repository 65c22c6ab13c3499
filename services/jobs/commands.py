"""What a caller asks of jobs: submit a campaign, cancel a job, read a job. Each is scoped to
the caller (another user's job is NotFound) and is one change (:mod:`services.jobs.changes`).
"""

from __future__ import annotations

from prospect.v1 import jobs_pb2
from services.common.errors import FailedPrecondition, Reason
from services.jobs import machine as m
from services.jobs import queries
from services.jobs.changes import Changes, apply_event
from services.jobs.convert import snapshot_proto, state_of
from services.jobs.db import Writer
from services.jobs.models import JobRow
from services.jobs.publishing import Applied
from services.jobs.retry import Retries
from services.jobs.submits import Submits
from services.jobs.unit import Unit


class Commands:
    def __init__(
        self, writer: Writer, changes: Changes, submits: Submits, retries: Retries
    ) -> None:
        self._writer = writer
        self._changes = changes
        self._submits = submits
        self._retries = retries

    async def job(self, user_id: str, job_id: str) -> JobRow:
        """The caller's job as stored now (NotFound for anyone else's)."""
        return await self._writer.read(lambda conn: queries.job_of_user(conn, user_id, job_id))

    async def snapshots(self, job_ids: list[str]) -> dict[str, jobs_pb2.JobUpdate]:
        """The stored snapshots of those of ``job_ids`` that exist (the watch fan-out's
        resync: :func:`queries.jobs_by_id`)."""
        rows = await self._writer.read(lambda conn: queries.jobs_by_id(conn, job_ids))
        return {row.id: snapshot_proto(row) for row in rows}

    async def submit(
        self, user_id: str, config: jobs_pb2.CampaignConfig, idempotency_key: str
    ) -> JobRow:
        """Record a PENDING job, its campaign and its discovery task; queue the task.

        Returns once committed (the idempotency lookup, the per-user limit and the inserts
        in one transaction); the task is published right after, without waiting on it."""
        return await self._submits.submit(user_id, config, idempotency_key)

    async def retry(self, user_id: str, job_id: str, idempotency_key: str) -> JobRow:
        """Run the caller's FAILED or CANCELLED job again as a new job that reuses what
        the first one paid for (:mod:`services.jobs.retry`); the retry already made when
        there is one."""
        return await self._retries.retry(user_id, job_id, idempotency_key)

    async def cancel(self, user_id: str, job_id: str) -> JobRow:
        """Cancel a PENDING or PROCESSING job: it is CANCELLING (no paid call starts any
        more) until its work under way has reported, or CANCELLED at once when none is.
        Cancelling a CANCELLING job again changes nothing; a final or FAILING job is
        FailedPrecondition."""
        rows: list[JobRow] = []

        def change(unit: Unit) -> list[Applied]:
            row = queries.owned(unit.job(job_id), user_id, job_id)
            status = state_of(row).status
            if status.terminal or status == m.Status.FAILING:
                raise FailedPrecondition(
                    f"job {job_id} is {status.value}; only pending, processing or cancelling "
                    "jobs can be cancelled",
                    reason=Reason.JOB_NOT_CANCELLABLE,
                    metadata={"job_id": job_id, "status": status.value},
                )
            rows.append(row)
            applied, _ = apply_event(unit, row, m.CancelRequested())
            return [applied]

        await self._changes.run(change)
        return rows[-1]
