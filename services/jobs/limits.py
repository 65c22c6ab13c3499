"""Per-caller limits of the jobs API that live in this replica's memory.

Each jobs replica counts on its own (nothing is shared, nothing survives a restart): with N
replicas behind a load balancer a caller may get up to N times a limit. They bound how much
of one replica a single caller can take, not a business quota (those, like
MAX_ACTIVE_JOBS_PER_USER, are counted in the database).

- :class:`DistinctUsers`: how many distinct users one service principal may act for (submit
  ``on_behalf_of``) within any 60 seconds (MAX_USERS_PER_PRINCIPAL_PER_MINUTE).
- :class:`RowBudget`: how many rows one user's ListJobs and ListLeads pages may list, a token
  bucket of LIST_ROWS_PER_USER_PER_S refilled up to LIST_ROWS_PER_USER_BURST.

Both raise :class:`~services.common.errors.ResourceExhausted` naming the setting, with how
long until a retry can succeed; the API maps it to RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.common.errors import Reason, ResourceExhausted

Clock = Callable[[], float]

WINDOW_S = 60.0
SWEEP_S = 60.0  # how often idle entries of every caller are dropped


class DistinctUsers:
    """The users each service principal acted for in the last :data:`WINDOW_S` seconds, at
    most ``limit`` of them: a new user beyond that is refused until one ages out. Memory:
    at most ``limit`` entries per principal seen within the window."""

    def __init__(self, limit: int, *, clock: Clock = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        # principal -> user -> when last acted for, oldest first
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._swept = clock()

    def admit(self, principal: str, user: str) -> None:
        """Record that ``principal`` acts for ``user`` now, or raise ResourceExhausted."""
        now = self._clock()
        if now - self._swept >= SWEEP_S:
            self._sweep(now)
        users = self._seen.setdefault(principal, OrderedDict())
        _expire(users, now - WINDOW_S)
        if user not in users and len(users) >= self._limit:
            # The earliest a slot frees: when the least recent user ages out of the window.
            oldest = next(iter(users.values()), now)
            raise ResourceExhausted(
                f"this service token acted for {self._limit} different users in the last "
                f"minute (MAX_USERS_PER_PRINCIPAL_PER_MINUTE); retry later",
                reason=Reason.PRINCIPAL_USER_LIMIT,
                subject=f"principal:{principal}",
                quota=(
                    f"at most {self._limit} different users per service token per minute "
                    "(MAX_USERS_PER_PRINCIPAL_PER_MINUTE)"
                ),
                metadata={
                    "setting": "MAX_USERS_PER_PRINCIPAL_PER_MINUTE",
                    "limit": str(self._limit),
                },
                retry_after=max(0.0, oldest + WINDOW_S - now),
            )
        users[user] = now
        users.move_to_end(user)

    def _sweep(self, now: float) -> None:
        self._swept = now
        for principal in list(self._seen):
            _expire(self._seen[principal], now - WINDOW_S)
            if not self._seen[principal]:
                del self._seen[principal]


def _expire(users: OrderedDict[str, float], before: float) -> None:
    while users:
        user, when = next(iter(users.items()))
        if when > before:
            return
        del users[user]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class Reservation:
    """Rows held for one listing; set :attr:`used` to the rows it listed (the rest go back
    to the bucket when the listing ends, all of them if it failed)."""

    held: int
    used: int = 0


class RowBudget:
    """A token bucket of rows per user: ``rate`` per second, at most ``burst`` saved up.

    A listing of up to ``page_size`` rows holds that many (at most the whole burst) before it
    queries, so concurrent listings cannot together overdraw the bucket by much; it is then
    charged for the rows it listed. When the bucket holds less, the listing is refused.
    Memory: a bucket per user that listed recently; full buckets are dropped.
    """

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._swept = clock()

    @contextmanager
    def reserve(self, user: str, page_size: int) -> Iterator[Reservation]:
        """Hold ``page_size`` rows of ``user``'s bucket for one listing, or raise
        ResourceExhausted; on leaving, keep only :attr:`Reservation.used` of them."""
        now = self._clock()
        if now - self._swept >= SWEEP_S:
            self._sweep(now)
        bucket = self._refilled(user, now)
        need = min(float(page_size), self._burst)
        if bucket.tokens < need:
            raise ResourceExhausted(
                f"listing too many rows: at most {self._rate:g} per second with a burst of "
                f"{self._burst:.0f} per user (LIST_ROWS_PER_USER_PER_S, "
                "LIST_ROWS_PER_USER_BURST); retry later or ask for smaller pages",
                reason=Reason.LIST_RATE_LIMIT,
                subject=f"user:{user}",
                quota=(
                    f"at most {self._rate:g} rows listed per second, {self._burst:.0f} at "
                    "once, per user (LIST_ROWS_PER_USER_PER_S, LIST_ROWS_PER_USER_BURST)"
                ),
                metadata={
                    "setting": "LIST_ROWS_PER_USER_PER_S",
                    "limit": f"{self._rate:g}",
                    "burst": f"{self._burst:.0f}",
                },
                # When the bucket holds this page again (a smaller page may go sooner).
                retry_after=(need - bucket.tokens) / self._rate if self._rate > 0 else None,
            )
        bucket.tokens -= need
        reservation = Reservation(held=int(need))
        try:
            yield reservation
        finally:
            unused = need - max(0, reservation.used)
            refund = self._refilled(user, self._clock())
            refund.tokens = min(self._burst, refund.tokens + unused)

    def _refilled(self, user: str, now: float) -> _Bucket:
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        return bucket

    def _sweep(self, now: float) -> None:
        self._swept = now
        for user, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self._rate >= self._burst:
                del self._buckets[user]
