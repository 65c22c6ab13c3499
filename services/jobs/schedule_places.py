"""The places a schedule already delivered, for ``only_new_leads`` (services/jobs/scheduler.py).

A place is delivered when it is an enriched lead of one of the schedule's COMPLETED jobs.
They are gathered into ``schedule_places`` when the schedule next fires, in the fire's
transaction, and the discovery task of every job the schedule starts carries them: the
worker buys no details for them, scores none of them, and counts them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Table, exists, func, insert, literal, select

from services.jobs.models import JobRow, SchedulePlaceRow, ScheduleRow
from services.jobs.unit import JOBS, LEADS, Unit

# A discovery task carries at most this many known places (the most recent): ids of about
# 30 bytes keep the message far below NATS's 1 MB payload limit.
MAX_KNOWN_PLACES = 10_000


def _table(model: type[SchedulePlaceRow] | type[ScheduleRow]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


PLACES = _table(SchedulePlaceRow)
SCHEDULES = _table(ScheduleRow)


def known_places(unit: Unit, job: JobRow) -> list[str]:
    """The places ``job``'s discovery leaves out: those its schedule already delivered,
    when the schedule has ``only_new_leads`` (none otherwise)."""
    if not job.schedule_id:
        return []
    query = (
        select(PLACES.c.place_id)
        .join(SCHEDULES, SCHEDULES.c.id == PLACES.c.schedule_id)
        .where(PLACES.c.schedule_id == job.schedule_id, SCHEDULES.c.only_new_leads.is_(True))
        .order_by(PLACES.c.created_at.desc())
        .limit(MAX_KNOWN_PLACES)
    )
    return list(unit.connection.scalars(query).all())


def gather_delivered(conn: Connection, schedule_id: str, now: datetime) -> None:
    """Add to the schedule's known places the enriched leads of its COMPLETED jobs."""
    unknown = ~exists().where(
        PLACES.c.schedule_id == schedule_id, PLACES.c.place_id == LEADS.c.place_id
    )
    delivered = (
        select(
            literal(schedule_id),
            LEADS.c.place_id,
            func.min(LEADS.c.job_id),
            literal(now, PLACES.c.created_at.type),
        )
        .select_from(LEADS.join(JOBS, JOBS.c.id == LEADS.c.job_id))
        .where(
            JOBS.c.schedule_id == schedule_id,
            JOBS.c.status == "COMPLETED",
            LEADS.c.state == "enriched",
            unknown,
        )
        .group_by(LEADS.c.place_id)
    )
    columns = ["schedule_id", "place_id", "job_id", "created_at"]
    conn.execute(insert(PLACES).from_select(columns, delivered))
