"""A job's history (ListJobEvents): its entries written, and read back a page at a time.

Entries are written in the transaction of the change they describe: those a transition
gives (:func:`services.jobs.machine.history_of`, through :func:`services.jobs.changes.
apply_event`), and the ones no transition makes (a job recorded, a job retried by
another). Each has a ``seq`` that orders it within its job (the job's version then,
times :data:`~services.jobs.machine._history.PER_CHANGE`, plus its index in the change),
so a page is an index range scan. The retention job deletes them with their job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from prospect.v1 import jobs_pb2
from services.common.errors import InvalidArgument
from services.jobs import machine as m
from services.jobs.convert import timestamp
from services.jobs.models import JobEventRow, JobRow, transient
from services.jobs.page_tokens import PageTokens
from services.jobs.tasks import new_id
from services.jobs.unit import Unit


def rows_of(job_id: str, entries: list[m.HistoryEntry], now: datetime) -> list[JobEventRow]:
    """``entries`` of ``job_id`` as rows to insert."""
    return [
        transient(
            JobEventRow,
            {
                "id": new_id("evt"),
                "job_id": job_id,
                "seq": seq,
                "at": now,
                "kind": entry.kind.value,
                "stage": entry.stage.value,
                "message": entry.message,
            },
        )
        for entry, seq in zip(entries, m.seq_of(entries), strict=True)
    ]


def record(unit: Unit, job_id: str, entries: list[m.HistoryEntry], now: datetime) -> None:
    """Add ``entries`` to ``job_id``'s history in ``unit``'s transaction."""
    if entries:
        unit.add_events(rows_of(job_id, entries, now))


def submitted(job: JobRow, message: str) -> m.HistoryEntry:
    """The first entry of ``job`` (version 1): it was recorded."""
    return m.HistoryEntry(m.HistoryKind.SUBMITTED, m.Stage(job.stage), message, job.version)


def retried_by(job: JobRow, retry_id: str) -> m.HistoryEntry:
    """The final ``job`` was retried as ``retry_id``: its last entry (see
    :func:`services.jobs.machine.seq_of`)."""
    return m.HistoryEntry(
        m.HistoryKind.RETRIED_BY, m.Stage(job.stage), f"Retried as job {retry_id}", job.version
    )


def _position(position: dict[str, Any]) -> int:
    seq = position.get("q")
    if type(seq) is not int or seq < 0 or len(position) != 1:
        raise InvalidArgument("page_token", "is not a token this listing returned")
    return seq


def event_proto(row: JobEventRow) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(
        at=timestamp(row.at),
        kind=row.kind,
        stage=f"STAGE_{row.stage}",
        message=row.message,
    )


async def list_events(
    session: AsyncSession, tokens: PageTokens, job: JobRow, page_size: int, page_token: str
) -> tuple[list[JobEventRow], str]:
    """A page of ``job``'s history, oldest first, and the next page's token ("" at end)."""
    scope = f"events:{job.user_id}:{job.id}"
    position = tokens.decode(page_token, scope)
    query = select(JobEventRow).where(JobEventRow.job_id == job.id)
    if position is not None:
        query = query.where(JobEventRow.seq > _position(position))
    query = query.order_by(JobEventRow.seq).limit(page_size + 1)
    rows = list((await session.scalars(query)).all())
    next_token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_token = tokens.encode(scope, {"q": rows[-1].seq})
    return rows, next_token
