"""When a schedule fires: pure functions of its spec and the clock, no I/O.

A spec is a cron expression read in an IANA time zone, or a fixed interval; either may
have a start and an end. Every time is an aware datetime; fire times are returned in UTC.

Cron expressions are parsed and walked by cronsim, which follows Debian cron across
daylight-saving changes: a job at a fixed local time (``30 2 * * *``) that falls in the
spring-forward gap runs at the first moment after it (03:00), and one in the fall-back
repeat runs once, at its first occurrence; an expression with a wildcard minute or hour
(``*/15 * * * *``) runs at every real instant that matches, so it fires every 15 minutes
of elapsed time through both changes.

An interval fires at ``anchor + k * interval``, ``k >= 0``: the anchor is the start when
given, else the moment the schedule was created (which itself is not a fire time: the first
fire is one interval later).

The catch-up policy (:func:`due`): a replica that finds a schedule due fires once, for the
latest fire time that has passed, however many passed while no replica was running; the
next fire time is then the first one after now.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# cronsim gives up on an expression that matches nothing within 50 years.
_ONE_SECOND = timedelta(seconds=1)
_TINY = timedelta(microseconds=1)


class SpecError(ValueError):
    """A spec that cannot fire: ``field`` names the part at fault, the message the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Spec:
    """When a schedule fires: ``cron`` (five fields, read in ``time_zone``) or ``interval``;
    no fire before ``start`` or after ``end``."""

    cron: str = ""
    interval: timedelta | None = None
    time_zone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None

    @property
    def zone(self) -> ZoneInfo:
        return zone_named(self.time_zone)


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (tzdata), or SpecError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError("spec.time_zone", f"unknown time zone {name!r} (an IANA name)") from None


def check(spec: Spec, now: datetime, min_interval: timedelta) -> None:
    """Raise SpecError unless ``spec`` is well formed and never fires more often than
    ``min_interval`` (for cron, over its next 100 fire times from ``now``)."""
    if bool(spec.cron) == (spec.interval is not None):
        raise SpecError("spec", "give exactly one of cron and interval")
    if spec.start is not None and spec.end is not None and spec.end <= spec.start:
        raise SpecError("spec.end_time", "must be after spec.start_time")
    if spec.interval is not None:
        if spec.time_zone != "UTC":
            raise SpecError("spec.time_zone", "is for cron schedules only")
        if spec.interval < min_interval:
            raise SpecError(
                "spec.interval",
                f"must be at least {min_interval.total_seconds():g}s (SCHEDULE_MIN_INTERVAL_S)",
            )
        return
    if len(spec.cron.split()) != 5:
        raise SpecError("spec.cron", "must have five fields: minute hour day month weekday")
    zone = spec.zone
    try:
        times = list(_cron_after(spec.cron, zone, now, 100))
    except CronSimError as exc:
        raise SpecError("spec.cron", f"is not a cron expression ({exc})") from None
    if not times:
        raise SpecError("spec.cron", "never fires")
    gaps = [b - a for a, b in pairwise(times)]
    if gaps and min(gaps) < min_interval:
        raise SpecError(
            "spec.cron",
            f"fires more often than every {min_interval.total_seconds():g}s "
            "(SCHEDULE_MIN_INTERVAL_S)",
        )


def _cron_after(expr: str, zone: ZoneInfo, after: datetime, limit: int) -> Iterator[datetime]:
    """Up to ``limit`` fire times of ``expr`` in ``zone`` strictly after ``after``, in UTC."""
    # cronsim works in whole seconds, from a local wall time; fire times are whole minutes.
    local = after.astimezone(zone).replace(microsecond=0)
    count = 0
    try:
        for when in CronSim(expr, local):
            fire = when.astimezone(UTC)
            # A fixed local time read back from within a fall-back repeat can come out
            # before ``after``: only later instants count.
            if fire <= after:
                continue
            yield fire
            count += 1
            if count >= limit:
                return
    except StopIteration:  # pragma: no cover - cronsim ends its iteration itself
        return


def _interval_after(interval: timedelta, anchor: datetime, after: datetime) -> datetime:
    if after < anchor:
        return anchor
    steps = (after - anchor) // interval + 1
    return anchor + steps * interval


def next_fires(spec: Spec, after: datetime, created_at: datetime, limit: int) -> list[datetime]:
    """The first ``limit`` fire times strictly after ``after``, within start and end."""
    if spec.start is not None and after < spec.start:
        after = spec.start - _TINY  # the start itself may be a fire time
    fires: list[datetime] = []
    if spec.interval is not None:
        anchor = spec.start if spec.start is not None else created_at + spec.interval
        when = after
        while len(fires) < limit:
            when = _interval_after(spec.interval, anchor, when)
            fires.append(when)
    else:
        fires = list(_cron_after(spec.cron, spec.zone, after, limit))
    return [f.astimezone(UTC) for f in fires if spec.end is None or f <= spec.end]


def next_fire(spec: Spec, after: datetime, created_at: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (None: the spec ended)."""
    fires = next_fires(spec, after, created_at, 1)
    return fires[0] if fires else None


@dataclass(frozen=True, slots=True)
class Due:
    """A schedule found due: fire once for ``fire_at``; next due at ``next_fire_at``."""

    fire_at: datetime
    next_fire_at: datetime | None
    missed: int  # fire times passed over (not run) before ``fire_at``; capped at LOOK_AHEAD


# Fire times walked one by one to find the latest that passed; beyond this many, the cron
# spec is walked backwards from now instead (an interval is plain arithmetic).
LOOK_AHEAD = 1000


def due(spec: Spec, next_fire_at: datetime, now: datetime, created_at: datetime) -> Due | None:
    """The fire a replica makes at ``now`` for a schedule whose next fire time was
    ``next_fire_at`` (None when that is still ahead): the latest fire time at or before
    ``now``, however many passed (the catch-up policy), and the first one after ``now``."""
    if next_fire_at > now:
        return None
    fire_at = next_fire_at
    missed = 0
    bound = now if spec.end is None else min(now, spec.end)
    if spec.interval is not None:
        anchor = spec.start if spec.start is not None else created_at + spec.interval
        latest = anchor + ((bound - anchor) // spec.interval) * spec.interval
        if latest > fire_at:
            missed = (latest - fire_at) // spec.interval
            fire_at = latest
    else:
        while missed < LOOK_AHEAD:
            following = next_fire(spec, fire_at, created_at)
            if following is None or following > now:
                break
            fire_at, missed = following, missed + 1
        else:
            fire_at = _cron_latest(spec, bound, fire_at)
    return Due(fire_at, next_fire(spec, now, created_at), missed)


def _cron_latest(spec: Spec, now: datetime, floor: datetime) -> datetime:
    """The latest cron fire time at or before ``now`` (at least ``floor``)."""
    local = (now + _ONE_SECOND).astimezone(spec.zone).replace(microsecond=0)
    for when in CronSim(spec.cron, local, reverse=True):
        fire = when.astimezone(UTC)
        if fire <= now:
            return max(fire, floor)
    return floor  # pragma: no cover - floor itself is a fire time at or before now
