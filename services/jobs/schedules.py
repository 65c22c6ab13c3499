"""Schedules: campaigns that run themselves (CreateSchedule ... TriggerSchedule).

What a caller asks of a schedule, each in one transaction and scoped to the caller
(another user's schedule is NotFound like an unknown one). Firing, by the scheduler loop
or by TriggerSchedule, is :mod:`services.jobs.scheduler`; when a spec fires,
:mod:`services.jobs.schedule_times`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Connection, Table, and_, delete, func, insert, or_, select, update

from prospect.v1 import jobs_pb2
from services.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
)
from services.common.settings import Settings
from services.jobs import schedule_times, validation
from services.jobs.convert import config_from_json, config_to_json, timestamp
from services.jobs.db import Writer
from services.jobs.models import (
    ScheduleFireRow,
    SchedulePlaceRow,
    ScheduleRow,
    transient,
    utcnow,
)
from services.jobs.page_tokens import PageTokens
from services.jobs.schedule_times import Spec, SpecError
from services.jobs.tasks import new_id

SCHEDULE_ID = re.compile(r"\Asch_[0-9a-f]{32}\Z")
NEXT_SHOWN = 5  # Schedule.next_fire_times
T = TypeVar("T")


def _table() -> Table:
    table = ScheduleRow.__table__
    assert isinstance(table, Table)
    return table


SCHEDULES = _table()


# Specs ----------------------------------------------------------------------------------


def spec_from_json(data: dict[str, Any]) -> Spec:
    """A spec as stored (ScheduleRow.spec)."""
    interval = data.get("interval_s")

    def when(key: str) -> datetime | None:
        value = data.get(key)
        return datetime.fromisoformat(value).astimezone(UTC) if value else None

    return Spec(
        cron=str(data.get("cron", "")),
        interval=timedelta(seconds=float(interval)) if interval is not None else None,
        time_zone=str(data.get("time_zone", "UTC")),
        start=when("start_time"),
        end=when("end_time"),
    )


def spec_to_json(spec: Spec) -> dict[str, Any]:
    data: dict[str, Any] = (
        {"cron": spec.cron, "time_zone": spec.time_zone}
        if spec.cron
        else {"interval_s": spec.interval.total_seconds() if spec.interval else 0.0}
    )
    if spec.start is not None:
        data["start_time"] = spec.start.isoformat()
    if spec.end is not None:
        data["end_time"] = spec.end.isoformat()
    return data


def spec_proto(spec: Spec) -> jobs_pb2.ScheduleSpec:
    proto = jobs_pb2.ScheduleSpec(time_zone=spec.time_zone)
    if spec.cron:
        proto.cron = spec.cron
    elif spec.interval is not None:
        duration = Duration()
        duration.FromTimedelta(spec.interval)
        proto.interval.CopyFrom(duration)
    if spec.start is not None:
        proto.start_time.FromDatetime(spec.start)
    if spec.end is not None:
        proto.end_time.FromDatetime(spec.end)
    return proto


def next_fire_times(row: ScheduleRow) -> list[datetime]:
    """The schedule's next fire times (none while paused or once it ended)."""
    if row.paused or row.next_fire_at is None:
        return []
    spec = spec_from_json(row.spec)
    later = schedule_times.next_fires(spec, row.next_fire_at, row.created_at, NEXT_SHOWN - 1)
    return [row.next_fire_at, *later]


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def schedule_proto(row: ScheduleRow) -> jobs_pb2.Schedule:
    return jobs_pb2.Schedule(
        schedule_id=row.id,
        config=config_from_json(row.config),
        spec=spec_proto(spec_from_json(row.spec)),
        only_new_leads=row.only_new_leads,
        notify_url=row.notify_url,
        paused=row.paused,
        next_fire_times=[_timestamp(t) for t in next_fire_times(row)],
        created_at=timestamp(row.created_at),
        fire_count=row.fire_count,
        last_job_id=row.last_job_id,
    )


# Validation at the trust boundary -------------------------------------------------------


def validate_schedule_id(value: str, field: str = "schedule_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if SCHEDULE_ID.fullmatch(value) is None:
        raise InvalidArgument(field, "must look like sch_ followed by 32 hex digits")
    return value


def _spec(proto: jobs_pb2.ScheduleSpec, now: datetime, min_interval: timedelta) -> Spec:
    every = proto.WhichOneof("every")
    if every is None:
        raise InvalidArgument("spec", "give a cron expression or an interval")
    interval = proto.interval.ToTimedelta() if every == "interval" else None
    spec = Spec(
        cron=proto.cron.strip() if every == "cron" else "",
        interval=interval,
        time_zone=proto.time_zone or "UTC",
        start=proto.start_time.ToDatetime(UTC) if proto.HasField("start_time") else None,
        end=proto.end_time.ToDatetime(UTC) if proto.HasField("end_time") else None,
    )
    if spec.cron and len(spec.cron) > validation.TEXT_MAX:
        raise InvalidArgument("spec.cron", f"must be at most {validation.TEXT_MAX} characters")
    try:
        schedule_times.check(spec, now, min_interval)
    except SpecError as exc:
        raise InvalidArgument(exc.field, exc.rule) from None
    if spec.end is not None and spec.end <= now:
        raise InvalidArgument("spec.end_time", "must be in the future")
    return spec


def validate_create(
    request: jobs_pb2.CreateScheduleRequest,
    now: datetime,
    min_interval: timedelta,
    allowed_hosts: Collection[str] = frozenset(),
) -> tuple[jobs_pb2.CampaignConfig, Spec, str]:
    """The cleaned config, the spec and the notify URL of ``request``, or InvalidArgument
    naming every field that breaks a rule (the notify URL as SubmitCampaign's
    ``config.notify_url``; ``allowed_hosts``: WEBHOOK_ALLOWED_HOSTS)."""
    errors: list[InvalidArgument] = []

    def checked(check: Callable[[], T], default: T) -> T:
        try:
            return check()
        except InvalidArgument as exc:
            errors.append(exc)
            return default

    config = jobs_pb2.CampaignConfig()
    if not request.HasField("config"):
        errors.append(InvalidArgument("config", "is required"))
    else:
        config = checked(
            lambda: validation.validate_config(request.config, allowed_hosts=allowed_hosts),
            config,
        )
    spec = checked(lambda: _spec(request.spec, now, min_interval), Spec())
    notify_url = checked(
        lambda: validation.validate_notify_url(request.notify_url, "notify_url", allowed_hosts),
        "",
    )
    key = request.idempotency_key
    if len(key) > validation.IDEMPOTENCY_KEY_MAX or (key and not key.isprintable()):
        errors.append(
            InvalidArgument(
                "idempotency_key",
                f"must be at most {validation.IDEMPOTENCY_KEY_MAX} printable characters",
            )
        )
    if errors:
        raise InvalidArgument.of(errors)
    return config, spec, notify_url


def not_found(schedule_id: str) -> NotFound:
    return NotFound(
        f"schedule {schedule_id} not found",
        reason=Reason.SCHEDULE_NOT_FOUND,
        metadata={"schedule_id": schedule_id},
    )


def _row(conn: Connection, user_id: str, schedule_id: str) -> ScheduleRow:
    found = conn.execute(select(SCHEDULES).where(SCHEDULES.c.id == schedule_id)).first()
    if found is None or found.user_id != user_id:
        raise not_found(schedule_id)
    return transient(ScheduleRow, found._mapping)


def _position(position: dict[str, Any]) -> tuple[datetime, str]:
    created, last_id = position.get("c"), position.get("i")
    rejected = InvalidArgument("page_token", "is not a token this listing returned")
    if not isinstance(created, str) or not isinstance(last_id, str) or len(position) != 2:
        raise rejected
    if SCHEDULE_ID.fullmatch(last_id) is None:
        raise rejected
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        raise rejected from None
    if when.tzinfo is None:
        raise rejected
    return when.astimezone(UTC), last_id


class Schedules:
    """The schedule RPCs' reads and writes (firing: services/jobs/scheduler.py)."""

    def __init__(self, settings: Settings, writer: Writer, tokens: PageTokens) -> None:
        self._settings = settings
        self._writer = writer
        self._tokens = tokens

    @property
    def min_interval(self) -> timedelta:
        return timedelta(seconds=self._settings.schedule_min_interval_s)

    async def create(self, user_id: str, request: jobs_pb2.CreateScheduleRequest) -> ScheduleRow:
        now = utcnow()
        config, spec, notify_url = validate_create(
            request, now, self.min_interval, self._settings.webhook_hosts
        )
        key = request.idempotency_key or None
        limit = self._settings.max_schedules_per_user
        row = transient(
            ScheduleRow,
            {
                "id": new_id("sch"),
                "user_id": user_id,
                "config": config_to_json(config),
                "spec": spec_to_json(spec),
                "only_new_leads": request.only_new_leads,
                "notify_url": notify_url,
                "paused": False,
                "next_fire_at": schedule_times.next_fire(spec, now, now),
                "fire_count": 0,
                "last_job_id": "",
                "idempotency_key": key,
                "created_at": now,
                "updated_at": now,
            },
        )

        def work(conn: Connection) -> ScheduleRow:
            if key is not None:
                found = conn.execute(
                    select(SCHEDULES).where(
                        SCHEDULES.c.user_id == user_id, SCHEDULES.c.idempotency_key == key
                    )
                ).first()
                if found is not None:
                    return _answer_for_known_key(transient(ScheduleRow, found._mapping), row)
            count = conn.scalar(
                select(func.count()).select_from(SCHEDULES).where(SCHEDULES.c.user_id == user_id)
            )
            if (count or 0) >= limit:
                raise ResourceExhausted(
                    f"{count} schedules: at most {limit} per user (MAX_SCHEDULES_PER_USER)",
                    reason=Reason.SCHEDULE_LIMIT,
                    subject=f"user:{user_id}",
                    quota=f"at most {limit} schedules per user (MAX_SCHEDULES_PER_USER)",
                    metadata={"setting": "MAX_SCHEDULES_PER_USER", "limit": str(limit)},
                )
            conn.execute(insert(SCHEDULES), [{c.key: getattr(row, c.key) for c in SCHEDULES.c}])
            return row

        return await self._writer.run(work)

    async def get(self, user_id: str, schedule_id: str) -> ScheduleRow:
        return await self._writer.read(lambda conn: _row(conn, user_id, schedule_id))

    async def list(
        self, user_id: str, page_size: int, page_token: str
    ) -> tuple[list[ScheduleRow], str]:
        """The caller's schedules, newest first; a page and the next page's token."""
        scope = f"schedules:{user_id}"
        position = self._tokens.decode(page_token, scope)
        query = select(SCHEDULES).where(SCHEDULES.c.user_id == user_id)
        if position is not None:
            created, last_id = _position(position)
            query = query.where(
                or_(
                    SCHEDULES.c.created_at < created,
                    and_(SCHEDULES.c.created_at == created, SCHEDULES.c.id < last_id),
                )
            )
        query = query.order_by(SCHEDULES.c.created_at.desc(), SCHEDULES.c.id.desc())
        query = query.limit(page_size + 1)

        def work(conn: Connection) -> list[ScheduleRow]:
            return [transient(ScheduleRow, r._mapping) for r in conn.execute(query)]

        rows = await self._writer.read(work)
        token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            last = rows[-1]
            token = self._tokens.encode(scope, {"c": last.created_at.isoformat(), "i": last.id})
        return rows, token

    async def set_paused(self, user_id: str, schedule_id: str, paused: bool) -> ScheduleRow:
        """Pause (no fires) or resume (the next fire time counted from now: fire times
        passed while paused are not run)."""

        def work(conn: Connection) -> ScheduleRow:
            row = _row(conn, user_id, schedule_id)
            if row.paused == paused:
                return row
            now = utcnow()
            values: dict[str, Any] = {"paused": paused, "updated_at": now}
            if not paused:
                spec = spec_from_json(row.spec)
                values["next_fire_at"] = schedule_times.next_fire(spec, now, row.created_at)
            conn.execute(update(SCHEDULES).where(SCHEDULES.c.id == row.id).values(values))
            for name, value in values.items():
                setattr(row, name, value)
            return row

        return await self._writer.run(work)

    async def delete(self, user_id: str, schedule_id: str) -> None:
        """Remove the schedule, its fires and its known places; the jobs it started stay,
        still naming it. A replica firing it at this moment finds its row changed and rolls
        back (services/jobs/scheduler.py)."""

        def work(conn: Connection) -> None:
            row = _row(conn, user_id, schedule_id)
            conn.execute(delete(SCHEDULES).where(SCHEDULES.c.id == row.id))
            for model in (ScheduleFireRow, SchedulePlaceRow):
                table = model.__table__
                assert isinstance(table, Table)
                conn.execute(delete(table).where(table.c.schedule_id == row.id))

        await self._writer.run(work)


def _answer_for_known_key(existing: ScheduleRow, request: ScheduleRow) -> ScheduleRow:
    """``existing`` when ``request`` repeats the create that made it; else AlreadyExists."""
    fields = ("config", "spec", "only_new_leads", "notify_url")
    if all(getattr(existing, f) == getattr(request, f) for f in fields):
        return existing
    raise AlreadyExists(
        f"idempotency_key {request.idempotency_key!r} was used for schedule {existing.id} "
        "with a different request; use a new key",
        metadata={"idempotency_key": request.idempotency_key or "", "schedule_id": existing.id},
    )
