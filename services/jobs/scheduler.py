"""Firing schedules: the loop every jobs replica runs, and TriggerSchedule.

Each poll, a replica reads the schedules due (not paused, ``next_fire_at`` passed) and fires
each in ONE transaction:

1. the job, made as SubmitCampaign makes it (:meth:`Submits.record_fire`: the per-user
   active-job limit, the campaign, the discovery task and its outbox row), owned by the
   schedule's user and linked to it (``jobs.schedule_id``);
2. a ``schedule_fires`` row keyed by (schedule, fire time): a second replica firing the
   same fire time breaks the primary key, and its whole transaction rolls back;
3. the schedule moved on, guarded by the ``next_fire_at`` it read (compare-and-set): a
   replica that read the schedule before another fired, paused, resumed or deleted it
   updates nothing and rolls back.

So one fire time makes one job whatever the number of replicas, their clocks or a crash
between any two steps: the database decides, not timing. The fire time is chosen by
:func:`services.jobs.schedule_times.due`: after downtime, only the latest passed fire time
runs, once.

With ``only_new_leads``, the places an earlier run delivered (the enriched leads of the
schedule's COMPLETED jobs) are gathered into ``schedule_places`` in the fire's transaction,
and the discovery task carries them (:func:`known_places`): the worker neither buys their
details again nor reports them, and counts them (``JobMetrics.leads_skipped_known``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from services.common.errors import ProspectError
from services.common.logs import job_context
from services.common.settings import Settings
from services.jobs import schedule_times
from services.jobs.convert import config_from_json
from services.jobs.db import Writer
from services.jobs.models import (
    JobRow,
    OutboxRow,
    ScheduleFireRow,
    ScheduleRow,
    transient,
    utcnow,
)
from services.jobs.schedule_places import gather_delivered
from services.jobs.schedules import SCHEDULES, not_found, spec_from_json
from services.jobs.submits import Submits
from services.jobs.unit import Unit

log = logging.getLogger(__name__)

BATCH = 100  # schedules fired per round at most
# TriggerSchedule racing the loop on the same schedule's known places tries again.
TRIGGER_RETRIES = 3


def _fires_table() -> Table:
    table = ScheduleFireRow.__table__
    assert isinstance(table, Table)
    return table


FIRES = _fires_table()


class Lost(Exception):
    """Another replica (or a pause, resume or delete) changed the schedule first."""


@dataclass(frozen=True)
class Fired:
    job: JobRow | None  # None: the user's active-job limit refused it (the fire is skipped)
    rows: list[OutboxRow]
    refused: Exception | None = None


def fire(
    unit: Unit,
    submits: Submits,
    schedule: ScheduleRow,
    fire_at: datetime,
    next_fire_at: datetime | None,
    *,
    manual: bool,
) -> Fired:
    """Fire ``schedule`` for ``fire_at`` in ``unit``'s transaction (the module's steps);
    raises Lost, or IntegrityError from the database, when another got there first."""
    conn = unit.connection
    now = utcnow()
    if schedule.only_new_leads:
        gather_delivered(conn, schedule.id, now)
    config = config_from_json(schedule.config)
    if schedule.notify_url:
        config.notify_url = schedule.notify_url
    answer, rows = submits.record_fire(unit, schedule.user_id, config, schedule.id)
    job = answer if isinstance(answer, JobRow) else None
    if job is not None:
        conn.execute(
            insert(FIRES),
            [{"schedule_id": schedule.id, "fire_at": fire_at, "job_id": job.id,
              "manual": manual, "created_at": now}],
        )  # fmt: skip
    values: dict[str, object] = {"updated_at": now}
    if job is not None:
        values.update(fire_count=SCHEDULES.c.fire_count + 1, last_job_id=job.id)
    guard = SCHEDULES.c.id == schedule.id
    if not manual:
        values["next_fire_at"] = next_fire_at
        guard = guard & (SCHEDULES.c.next_fire_at == schedule.next_fire_at)
        guard = guard & SCHEDULES.c.paused.is_(False)
    if conn.execute(update(SCHEDULES).where(guard).values(values)).rowcount != 1:
        raise Lost(schedule.id)
    return Fired(job, rows, None if isinstance(answer, JobRow) else answer)


class Scheduler:
    """Fires the schedules that are due; see the module docstring."""

    def __init__(self, settings: Settings, writer: Writer, submits: Submits) -> None:
        self._settings = settings
        self._writer = writer
        self._submits = submits

    async def run(self, stop: asyncio.Event) -> None:
        """Fire what is due every SCHEDULER_POLL_S, or sooner when a fire time comes
        first, until ``stop``."""
        poll = self._settings.scheduler_poll_s
        while not stop.is_set():
            wait = poll
            try:
                upcoming = await self.fire_due(utcnow())
                if upcoming is not None:
                    wait = min(poll, max(0.0, (upcoming - utcnow()).total_seconds()))
            except Exception:
                log.exception("scheduler round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def fire_due(self, now: datetime) -> datetime | None:
        """Fire every schedule due at ``now``; the earliest fire time still ahead."""

        def read(conn: Connection) -> tuple[list[ScheduleRow], datetime | None]:
            active = SCHEDULES.c.paused.is_(False)
            due = conn.execute(
                select(SCHEDULES)
                .where(active, SCHEDULES.c.next_fire_at <= now)
                .order_by(SCHEDULES.c.next_fire_at)
                .limit(BATCH)
            ).all()
            upcoming = conn.scalar(
                select(func.min(SCHEDULES.c.next_fire_at)).where(
                    active, SCHEDULES.c.next_fire_at > now
                )
            )
            return [transient(ScheduleRow, r._mapping) for r in due], upcoming

        rows, upcoming = await self._writer.read(read)
        for row in rows:
            await self._fire_one(row, now)
        if len(rows) == BATCH:
            return now  # more are due: go again at once
        return upcoming

    async def _fire_one(self, schedule: ScheduleRow, now: datetime) -> None:
        assert schedule.next_fire_at is not None
        spec = spec_from_json(schedule.spec)
        when = schedule_times.due(spec, schedule.next_fire_at, now, schedule.created_at)
        if when is None:
            return
        try:
            fired = await self._writer.run(
                lambda conn: fire(
                    Unit(conn), self._submits, schedule, when.fire_at, when.next_fire_at,
                    manual=False,
                )
            )  # fmt: skip
        except (Lost, IntegrityError):
            log.debug("schedule %s at %s fired by another replica", schedule.id, when.fire_at)
            return
        self._submits.committed(fired.rows)
        late = (utcnow() - when.fire_at).total_seconds()
        if fired.job is None:
            log.warning("schedule %s: fire at %s skipped: %s", schedule.id, when.fire_at,
                        fired.refused)  # fmt: skip
            return
        with job_context(fired.job.id):
            log.info(
                "schedule %s fired for %s (%.3fs late%s)",
                schedule.id,
                when.fire_at.isoformat(),
                late,
                f", {when.missed} missed fire times not run" if when.missed else "",
            )

    async def trigger(self, user_id: str, schedule_id: str) -> JobRow:
        """Run the caller's schedule now, paused or not: a job like a fire's, recorded as a
        manual fire at this moment. Raises the submit's refusal (the active-job limit)."""
        for attempt in range(TRIGGER_RETRIES):
            now = utcnow()

            def work(conn: Connection, now: datetime = now) -> Fired:
                found = conn.execute(select(SCHEDULES).where(SCHEDULES.c.id == schedule_id)).first()
                if found is None or found.user_id != user_id:
                    raise not_found(schedule_id)
                row = transient(ScheduleRow, found._mapping)
                return fire(Unit(conn), self._submits, row, now, None, manual=True)

            try:
                fired = await self._writer.run(work)
            except (Lost, IntegrityError):
                if attempt == TRIGGER_RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            self._submits.committed(fired.rows)
            if fired.job is None:
                assert isinstance(fired.refused, ProspectError)
                raise fired.refused
            return fired.job
        raise AssertionError("unreachable")
