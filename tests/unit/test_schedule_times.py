"""When schedules fire (services/jobs/schedule_times.py): intervals, cron in time zones
across daylight-saving changes, start and end, the catch-up policy. Pure: no waiting."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.jobs.schedule_times import Spec, SpecError, check, due, next_fire, next_fires

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
MINUTE = timedelta(minutes=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def local(zone: ZoneInfo, fires: list[datetime]) -> list[str]:
    return [f.astimezone(zone).isoformat() for f in fires]


# Intervals ------------------------------------------------------------------------------


def test_interval_fires_one_interval_after_creation_then_every_interval() -> None:
    created = utc(2026, 1, 1, 12, 0, 0)
    spec = Spec(interval=timedelta(seconds=2))
    assert next_fires(spec, created, created, 3) == [
        utc(2026, 1, 1, 12, 0, 2),
        utc(2026, 1, 1, 12, 0, 4),
        utc(2026, 1, 1, 12, 0, 6),
    ]
    # Strictly after: from a fire time, the next one.
    assert next_fire(spec, utc(2026, 1, 1, 12, 0, 4), created) == utc(2026, 1, 1, 12, 0, 6)


def test_interval_is_anchored_at_its_start_which_is_a_fire_time() -> None:
    start = utc(2026, 3, 1, 9, 0)
    spec = Spec(interval=timedelta(hours=1), start=start)
    created = utc(2026, 2, 1)
    assert next_fire(spec, created, created) == start
    assert next_fire(spec, utc(2026, 3, 1, 9, 30), created) == utc(2026, 3, 1, 10, 0)


def test_interval_in_elapsed_time_across_dst() -> None:
    """An interval is elapsed time: 24 h apart across the spring-forward night."""
    start = datetime(2026, 3, 7, 12, 0, tzinfo=NY).astimezone(UTC)
    spec = Spec(interval=timedelta(hours=24), start=start)
    fires = next_fires(spec, start - MINUTE, start, 3)
    assert [b - a for a, b in itertools.pairwise(fires)] == [timedelta(hours=24)] * 2
    assert local(NY, fires)[1] == "2026-03-08T13:00:00-04:00"


def test_end_stops_fires() -> None:
    created = utc(2026, 1, 1)
    spec = Spec(interval=timedelta(minutes=10), end=utc(2026, 1, 1, 0, 30))
    assert next_fires(spec, created, created, 10) == [
        utc(2026, 1, 1, 0, 10),
        utc(2026, 1, 1, 0, 20),
        utc(2026, 1, 1, 0, 30),
    ]
    assert next_fire(spec, utc(2026, 1, 1, 0, 30), created) is None


# Cron in time zones ---------------------------------------------------------------------


def test_cron_reads_its_zone_and_answers_utc() -> None:
    spec = Spec(cron="0 9 * * MON-FRI", time_zone="Europe/Berlin")
    after = utc(2026, 1, 2, 12)  # a Friday, after 9:00 Berlin
    fires = next_fires(spec, after, after, 3)
    assert fires == [utc(2026, 1, 5, 8), utc(2026, 1, 6, 8), utc(2026, 1, 7, 8)]
    assert all(f.tzinfo is UTC for f in fires)


@pytest.mark.parametrize(
    ("zone", "after", "expected"),
    [
        # 2026-03-08 02:00 EST jumps to 03:00 EDT: 02:30 does not exist that night.
        (
            "America/New_York",
            utc(2026, 3, 7, 12),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
        ),
        # 2026-03-29 02:00 CET jumps to 03:00 CEST.
        (
            "Europe/Berlin",
            utc(2026, 3, 28, 12),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
    ],
)
def test_cron_in_the_spring_forward_gap_runs_once_right_after_it(
    zone: str, after: datetime, expected: list[str]
) -> None:
    spec = Spec(cron="30 2 * * *", time_zone=zone)
    fires = next_fires(spec, after, after, 2)
    assert local(ZoneInfo(zone), fires) == expected


@pytest.mark.parametrize(
    ("zone", "after", "expected"),
    [
        # 2026-11-01 02:00 EDT falls back to 01:00 EST: 01:30 happens twice; runs once.
        (
            "America/New_York",
            utc(2026, 10, 31, 12),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        # 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:30 happens twice; runs once.
        (
            "Europe/Berlin",
            utc(2026, 10, 24, 12),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
    ],
)
def test_cron_in_the_fall_back_repeat_runs_once(
    zone: str, after: datetime, expected: list[str]
) -> None:
    hour = "1" if zone == "America/New_York" else "2"
    spec = Spec(cron=f"30 {hour} * * *", time_zone=zone)
    fires = next_fires(spec, after, after, 2)
    assert local(ZoneInfo(zone), fires) == expected


def test_cron_asked_during_the_repeat_after_its_fire_does_not_fire_again() -> None:
    spec = Spec(cron="30 1 * * *", time_zone="America/New_York")
    # 01:10 EST, the second 01:10 of the night: 01:30 EDT already passed an hour ago.
    after = datetime(2026, 11, 1, 1, 10, tzinfo=NY, fold=1).astimezone(UTC)
    assert local(NY, [next_fire(spec, after, after) or after]) == ["2026-11-02T01:30:00-05:00"]


def test_wildcard_hour_cron_fires_on_every_real_instant_through_fall_back() -> None:
    spec = Spec(cron="*/30 * * * *", time_zone="America/New_York")
    after = utc(2026, 11, 1, 4, 0)  # 00:00 EDT
    fires = next_fires(spec, after, after, 6)
    assert [b - a for a, b in itertools.pairwise(fires)] == [timedelta(minutes=30)] * 5
    assert local(NY, fires) == [
        "2026-11-01T00:30:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]


def test_cron_start_and_end() -> None:
    spec = Spec(cron="0 * * * *", start=utc(2026, 1, 1, 5), end=utc(2026, 1, 1, 7))
    after = utc(2026, 1, 1)
    assert next_fires(spec, after, after, 10) == [
        utc(2026, 1, 1, 5),
        utc(2026, 1, 1, 6),
        utc(2026, 1, 1, 7),
    ]


# Checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (Spec(), "spec"),
        (Spec(cron="* * * * *", interval=timedelta(hours=1)), "spec"),
        (Spec(interval=timedelta(seconds=30)), "spec.interval"),
        (Spec(cron="* * * * *"), "spec.cron"),  # every minute: under 5 minutes
        (Spec(cron="0,1 9 * * *"), "spec.cron"),
        (Spec(cron="0 0 * * * *"), "spec.cron"),  # six fields
        (Spec(cron="61 * * * *"), "spec.cron"),
        (Spec(cron="0 0 30 2 *"), "spec.cron"),  # never
        (Spec(cron="0 9 * * *", time_zone="Mars/Olympus"), "spec.time_zone"),
        (Spec(interval=timedelta(hours=1), time_zone="Europe/Berlin"), "spec.time_zone"),
        (
            Spec(interval=timedelta(hours=1), start=utc(2026, 2, 1), end=utc(2026, 1, 1)),
            "spec.end_time",
        ),
    ],
)
def test_check_refuses(spec: Spec, field: str) -> None:
    with pytest.raises(SpecError) as refused:
        check(spec, utc(2026, 1, 1), timedelta(minutes=5))
    assert refused.value.field == field


def test_check_accepts() -> None:
    now = utc(2026, 1, 1)
    check(Spec(cron="*/5 * * * *", time_zone="Asia/Kolkata"), now, timedelta(minutes=5))
    check(Spec(interval=timedelta(minutes=5)), now, timedelta(minutes=5))


# The catch-up policy --------------------------------------------------------------------


def test_not_due_before_its_time() -> None:
    spec = Spec(interval=timedelta(minutes=1))
    created = utc(2026, 1, 1)
    assert due(spec, utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 0, 59), created) is None


def test_on_time_fires_its_own_fire_time() -> None:
    spec = Spec(interval=timedelta(minutes=1))
    created = utc(2026, 1, 1)
    when = due(spec, utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 1, 0, 300_000), created)
    assert when is not None
    assert (when.fire_at, when.next_fire_at, when.missed) == (
        utc(2026, 1, 1, 0, 1),
        utc(2026, 1, 1, 0, 2),
        0,
    )


def test_after_downtime_only_the_latest_missed_fire_runs_once() -> None:
    spec = Spec(interval=timedelta(minutes=1))
    created = utc(2026, 1, 1)
    now = utc(2026, 1, 1, 3, 0, 30)  # three hours down
    when = due(spec, utc(2026, 1, 1, 0, 1), now, created)
    assert when is not None
    assert when.fire_at == utc(2026, 1, 1, 3, 0)
    assert when.next_fire_at == utc(2026, 1, 1, 3, 1)
    assert when.missed == 179


def test_cron_catch_up_walks_back_when_many_were_missed() -> None:
    spec = Spec(cron="*/5 * * * *", time_zone="Europe/Berlin")
    created = utc(2026, 1, 1)
    now = utc(2026, 3, 1, 10, 7)  # two months down: more than LOOK_AHEAD fire times
    when = due(spec, utc(2026, 1, 1, 0, 5), now, created)
    assert when is not None
    assert (when.fire_at, when.next_fire_at) == (utc(2026, 3, 1, 10, 5), utc(2026, 3, 1, 10, 10))


def test_catch_up_respects_the_end() -> None:
    spec = Spec(interval=timedelta(minutes=1), end=utc(2026, 1, 1, 0, 10))
    created = utc(2026, 1, 1)
    when = due(spec, utc(2026, 1, 1, 0, 1), utc(2026, 1, 2), created)
    assert when is not None
    assert (when.fire_at, when.next_fire_at) == (utc(2026, 1, 1, 0, 10), None)
