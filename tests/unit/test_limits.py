"""The jobs API's in-memory limits, on a clock the test moves: distinct users a service
principal acts for per minute, and rows a user's listings take from a token bucket."""

from __future__ import annotations

import pytest

from services.common.errors import ResourceExhausted
from services.jobs.limits import SWEEP_S, WINDOW_S, DistinctUsers, RowBudget
from tests.clock import Clock

# -- distinct users per service principal --------------------------------------------------


def test_a_principal_acts_for_at_most_the_limit_of_users_per_minute() -> None:
    clock = Clock()
    users = DistinctUsers(3, clock=clock)
    for user in ("u1", "u2", "u3"):
        users.admit("scheduler", user)
    with pytest.raises(ResourceExhausted, match="MAX_USERS_PER_PRINCIPAL_PER_MINUTE"):
        users.admit("scheduler", "u4")
    users.admit("scheduler", "u1")  # one of its three: fine, as often as it likes
    users.admit("other-service", "u4")  # per principal
    clock.now += WINDOW_S + 1
    users.admit("scheduler", "u4")  # the minute has passed


def test_the_minute_slides() -> None:
    clock = Clock()
    users = DistinctUsers(2, clock=clock)
    users.admit("svc", "a")
    clock.now += 30
    users.admit("svc", "b")
    clock.now += 29
    with pytest.raises(ResourceExhausted):
        users.admit("svc", "c")  # a and b both within the last 60 s
    clock.now += 2  # a was last seen 61 s ago, b 31 s ago
    users.admit("svc", "c")
    with pytest.raises(ResourceExhausted):
        users.admit("svc", "d")


def test_acting_again_for_a_user_keeps_them_counted() -> None:
    clock = Clock()
    users = DistinctUsers(1, clock=clock)
    users.admit("svc", "a")
    clock.now += 50
    users.admit("svc", "a")  # a's minute starts again
    clock.now += 50
    with pytest.raises(ResourceExhausted):
        users.admit("svc", "b")


def test_idle_principals_are_forgotten() -> None:
    clock = Clock()
    users = DistinctUsers(5, clock=clock)
    for i in range(100):
        users.admit(f"svc-{i}", "a")
    clock.now += max(WINDOW_S, SWEEP_S) + 1
    users.admit("svc-0", "a")
    assert list(users._seen) == ["svc-0"]


# -- rows listed per user -----------------------------------------------------------------


def list_rows(budget: RowBudget, user: str, page_size: int, rows: int) -> None:
    with budget.reserve(user, page_size) as listing:
        listing.used = rows


def test_listings_are_charged_the_rows_they_list() -> None:
    clock = Clock()
    budget = RowBudget(10.0, 100, clock=clock)
    list_rows(budget, "ann", 60, 60)
    list_rows(budget, "ann", 30, 3)  # holds 30, charged 3: 37 left
    with pytest.raises(ResourceExhausted, match="LIST_ROWS_PER_USER_PER_S"):
        list_rows(budget, "ann", 40, 40)
    list_rows(budget, "bob", 100, 100)  # per user
    list_rows(budget, "ann", 37, 37)
    with pytest.raises(ResourceExhausted):
        list_rows(budget, "ann", 1, 1)
    clock.now += 2.0  # 10 rows a second
    list_rows(budget, "ann", 20, 20)
    with pytest.raises(ResourceExhausted):
        list_rows(budget, "ann", 1, 1)
    clock.now += 60
    list_rows(budget, "ann", 100, 100)  # the bucket holds at most the burst


def test_listings_in_flight_hold_their_pages() -> None:
    budget = RowBudget(10.0, 100, clock=Clock())
    with budget.reserve("ann", 60) as first:
        with pytest.raises(ResourceExhausted):
            list_rows(budget, "ann", 50, 0)  # 60 held: only 40 left meanwhile
        first.used = 5
    list_rows(budget, "ann", 95, 95)  # the 55 unused came back


def test_a_failed_listing_costs_nothing() -> None:
    budget = RowBudget(10.0, 100, clock=Clock())
    with pytest.raises(RuntimeError), budget.reserve("ann", 100):
        raise RuntimeError("the database went away")
    list_rows(budget, "ann", 100, 100)


def test_a_page_larger_than_the_burst_needs_a_full_bucket_and_runs_into_debt() -> None:
    clock = Clock()
    budget = RowBudget(10.0, 100, clock=clock)
    list_rows(budget, "ann", 500, 300)  # 200 rows owed
    clock.now += 25.0  # 250 back: 50
    with pytest.raises(ResourceExhausted):
        list_rows(budget, "ann", 60, 60)
    list_rows(budget, "ann", 50, 50)


def test_full_buckets_are_forgotten() -> None:
    clock = Clock()
    budget = RowBudget(10.0, 100, clock=clock)
    for i in range(50):
        list_rows(budget, f"user-{i}", 10, 10)
    clock.now += SWEEP_S + 1
    list_rows(budget, "ann", 10, 10)
    assert list(budget._buckets) == ["ann"]
