"""Request-rate limits shared by every worker process, kept in a NATS KV bucket.

The limit is GCRA (the generic cell rate algorithm, a token bucket in one number): a key per
provider holds its *theoretical arrival time* (TAT). To send, a worker reads the TAT,
reserves the next slot with a compare-and-set on the entry's revision, and sleeps until the
slot opens. One round trip pair per request, no polling, and the limit holds across all
processes together because every reservation goes through the same key. On a rate-limit
answer, :meth:`SharedRateLimiter.penalize` pushes the TAT past the back-off, so every
worker waits at once.

Processes compare wall clocks (``time.time``), so the hosts' clocks must agree (NTP), as
they do on one machine and across a Kubernetes cluster.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from services.common import bus
from services.common.kvswap import swap

# Requests are spaced this much wider than the configured rate: network jitter can bring two
# requests closer together on arrival than they left, and a provider counting arrivals
# would then see one over its limit. 3% of throughput buys no rate-limit answers.
SPACING_MARGIN = 1.03

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


async def open_bucket(js: JetStreamContext) -> KeyValue:
    """The KV bucket of every provider's limiter (the jobs service creates it)."""
    return await bus.open_bucket(js, bus.RATE_LIMIT_BUCKET)


class SharedRateLimiter:
    """At most ``rate`` requests per second with bursts of ``burst - 1``, over all
    processes (one process's own requests stay an interval apart)."""

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        rate: float,
        burst: int,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._kv = kv
        self._key = key
        self._interval = SPACING_MARGIN / rate
        # One request of the provider's burst is left unused: after a burst, the provider's
        # allowance is down to what jitter needs, and two requests arriving closer than they
        # left (a stalled event loop sends late ones together) would find it empty.
        self._tolerance = max(0, burst - 2) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._departing = asyncio.Lock()
        self._last_departure = -math.inf

    async def _swap(self, next_tat: Callable[[float, float], float]) -> tuple[float, float]:
        """Compare-and-set the TAT to ``next_tat(tat, now)``; return (old tat, now)."""
        seen: tuple[float, float] = (0.0, 0.0)

        def step(value: bytes | None) -> bytes:
            nonlocal seen
            now = self._clock()
            # A fresh bucket starts without its burst: the provider may start counting
            # from our first request's arrival, which a cold connection delays.
            tat = now + self._tolerance if value is None else float(value or b"0")
            seen = (max(tat, now), now)
            return repr(next_tat(*seen)).encode()

        await swap(self._kv, self._key, step)
        return seen

    async def acquire(self) -> None:
        """Reserve the next slot and wait for it."""
        tat, now = await self._swap(lambda tat, _now: tat + self._interval)
        wait = tat - self._tolerance - now
        if wait > 0:
            await self._sleep(wait)
        # This process's requests leave an interval apart even when its event loop wakes
        # several of them late together (a busy loop, a cold start): sent together, they
        # would arrive together and the provider would count one over its limit. Bursts
        # remain across processes.
        async with self._departing:
            gap = self._last_departure + self._interval - self._clock()
            if gap > 0:
                await self._sleep(gap)
            self._last_departure = self._clock()

    async def penalize(self, seconds: float) -> None:
        """Nobody sends for ``seconds`` from now (slots already handed out keep their time)."""
        await self._swap(lambda tat, now: max(tat, now + seconds + self._tolerance))
