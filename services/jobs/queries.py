"""Read queries of the API, always scoped to the caller (another user's job is NotFound)."""

from __future__ import annotations

from sqlalchemy import Connection, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import NotFound
from services.jobs.machine import Status
from services.jobs.models import JobRow, LeadRow
from services.jobs.page_tokens import PageTokens, jobs_position, leads_position
from services.jobs.unit import Unit


def owned(row: JobRow | None, user_id: str, job_id: str) -> JobRow:
    """``row`` if it is ``user_id``'s job; NotFound otherwise (another user's job is
    indistinguishable from a missing one)."""
    if row is None or row.user_id != user_id:
        raise NotFound(f"job {job_id} not found", metadata={"job_id": job_id})
    return row


def job_of_user(conn: Connection, user_id: str, job_id: str) -> JobRow:
    """The job, loaded as a write transaction loads it, on a synchronous connection (every
    WatchJob starts here; see :meth:`services.jobs.db.Writer.read`)."""
    return owned(Unit(conn).job(job_id), user_id, job_id)


def jobs_by_id(conn: Connection, job_ids: list[str]) -> list[JobRow]:
    """The jobs of ``job_ids`` that exist, whoever owns them: only for the fan-out's resync,
    which hands each to the watchers of its job (each watcher was checked as the job's owner
    by its first read, before it saw anything)."""
    unit = Unit(conn)
    unit.load_jobs(job_ids)
    return [job for job in (unit.job(job_id) for job_id in job_ids) if job is not None]


async def job_for_user(session: AsyncSession, user_id: str, job_id: str) -> JobRow:
    """:func:`job_of_user` in an async session."""
    conn = await session.connection()
    return await conn.run_sync(job_of_user, user_id, job_id)


async def list_jobs(
    session: AsyncSession,
    tokens: PageTokens,
    user_id: str,
    page_size: int,
    page_token: str,
    status: Status | None,
) -> tuple[list[JobRow], str]:
    """The caller's jobs, newest first; a page and the token of the next one ("" at end)."""
    scope = f"jobs:{user_id}:{status.value if status else '*'}"
    position = tokens.decode(page_token, scope)
    query = select(JobRow).where(JobRow.user_id == user_id)
    if status is not None:
        query = query.where(JobRow.status == status.value)
    if position is not None:
        created, last_id = jobs_position(position)
        query = query.where(
            # Implied by the OR, but an index can seek on it: without it a deep page read
            # and dropped every row before it (page 150 of a user's jobs: 11.6 -> 0.3 ms
            # on PostgreSQL with 1,000,000 jobs; bench/large_tables.py).
            JobRow.created_at <= created,
            or_(
                JobRow.created_at < created,
                and_(JobRow.created_at == created, JobRow.id < last_id),
            ),
        )
    query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(page_size + 1)
    rows = list((await session.scalars(query)).all())
    next_token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        next_token = tokens.encode(scope, {"c": last.created_at.isoformat(), "i": last.id})
    return rows, next_token


async def list_leads(
    session: AsyncSession, tokens: PageTokens, job: JobRow, page_size: int, page_token: str
) -> tuple[list[LeadRow], str]:
    """A job's leads, best score first (by rank)."""
    scope = f"leads:{job.user_id}:{job.id}"
    position = tokens.decode(page_token, scope)
    query = select(LeadRow).where(LeadRow.job_id == job.id)
    if position is not None:
        query = query.where(LeadRow.rank > leads_position(position))
    query = query.order_by(LeadRow.rank).limit(page_size + 1)
    rows = list((await session.scalars(query)).all())
    next_token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_token = tokens.encode(scope, {"r": rows[-1].rank})
    return rows, next_token
