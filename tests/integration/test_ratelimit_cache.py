"""The shared rate limiter and the enrichment cache, on a real nats-server's KV buckets.

Two limiter objects on one key stand for two worker processes: the limit holds for both
together. A controlled clock makes the schedule exact (no timing assertions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

import tests.clock
from services.cli.stack import NatsServer
from services.common.cache import CachedEmail, CachedVerification, EnrichmentCache
from services.common.ratelimit import SPACING_MARGIN, SharedRateLimiter, open_bucket
from tests.nats_helpers import connected


class Clock(tests.clock.Clock):
    """A clock that moves only when someone sleeps on it (or the test moves it)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


async def departures(clock: Clock, *limiters: SharedRateLimiter) -> list[float]:
    """When each limiter's acquire let its request go, one after another (from 0)."""
    start, times = clock.now, []
    for limiter in limiters:
        await limiter.acquire()
        times.append(round(clock.now - start, 6))
    return times


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    async with connected(nats_server.settings()) as (_, js):
        yield js


async def test_two_processes_share_one_rate(js: JetStreamContext) -> None:
    kv = await open_bucket(js)
    clock = Clock()
    one = SharedRateLimiter(kv, "hunter", rate=10, burst=1, clock=clock, sleep=clock.sleep)
    two = SharedRateLimiter(kv, "hunter", rate=10, burst=1, clock=clock, sleep=clock.sleep)
    # Five requests from two processes: 100 ms apart (and the safety margin), as one queue.
    gap = 0.1 * SPACING_MARGIN
    times = await departures(clock, one, two, one, two, one)
    assert times == [round(gap * n, 6) for n in range(5)]


async def test_burst_then_rate(js: JetStreamContext) -> None:
    kv = await open_bucket(js)
    clock = Clock()
    limiter = SharedRateLimiter(kv, "google", rate=10, burst=3, clock=clock, sleep=clock.sleep)
    other = SharedRateLimiter(kv, "google", rate=10, burst=3, clock=clock, sleep=clock.sleep)
    gap = 0.1 * SPACING_MARGIN
    # A fresh bucket starts at the rate, not with a burst (see SharedRateLimiter._swap).
    assert await departures(clock, limiter, other, limiter) == [0, round(gap, 6), round(2 * gap, 6)]
    clock.now += 10  # idle: the burst is there, less the one request kept for jitter
    times = await departures(clock, limiter, other, limiter, other, limiter)
    assert times == [0, 0, round(gap, 6), round(2 * gap, 6), round(3 * gap, 6)]
    # Two at once from two processes, then 10/s. One process alone never sends two at once:
    clock.now += 10
    assert await departures(clock, limiter, limiter) == [0, round(gap, 6)]


async def test_a_rate_limit_answer_makes_every_process_wait(js: JetStreamContext) -> None:
    kv = await open_bucket(js)
    clock = Clock()
    one = SharedRateLimiter(kv, "nb", rate=10, burst=1, clock=clock, sleep=clock.sleep)
    two = SharedRateLimiter(kv, "nb", rate=10, burst=1, clock=clock, sleep=clock.sleep)
    await one.acquire()
    await one.penalize(5.0)  # the provider said "slow down" to process one
    await two.acquire()
    assert clock.sleeps == [5.0]  # process two waits too


async def test_limits_are_per_key(js: JetStreamContext) -> None:
    kv = await open_bucket(js)
    clock = Clock()
    a = SharedRateLimiter(kv, "a", rate=1, burst=1, clock=clock, sleep=clock.sleep)
    b = SharedRateLimiter(kv, "b", rate=1, burst=1, clock=clock, sleep=clock.sleep)
    await a.acquire()
    await b.acquire()
    assert clock.sleeps == []


async def test_cache_answers_per_provider_until_stale(js: JetStreamContext) -> None:
    cache = await EnrichmentCache.open(js, freshness_days=30)
    assert await cache.email("hunter", "example.com") is None
    await cache.store_email("hunter", "Example.com", CachedEmail("info@example.com", 91))
    assert await cache.email("hunter", "example.com") == CachedEmail("info@example.com", 91)
    assert await cache.email("sandbox", "example.com") is None  # never across providers
    await cache.store_verification("neverbounce", "a+b@x.io", CachedVerification("catchall"))
    assert await cache.verification("neverbounce", "A+B@x.io") == CachedVerification("catchall")

    stale = EnrichmentCache(await js.key_value("PROSPECT_ENRICHMENT_CACHE"), freshness_days=0)
    assert await stale.email("hunter", "example.com") is None


async def test_cache_off_when_freshness_is_zero(js: JetStreamContext) -> None:
    cache = await EnrichmentCache.open(js, freshness_days=0)
    await cache.store_email("hunter", "example.com", CachedEmail("info@example.com", 91))
    assert await cache.email("hunter", "example.com") is None
