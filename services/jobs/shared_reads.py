"""One read serving everyone who asks the same question at about the same time.

A watch stream that hears nothing for a while reads its job again (a snapshot may have
been lost on the way: core NATS delivers at most once). With many streams on one job (a
team's browsers, a dashboard) every one of them would read the same row at its own moment:
10,000 streams on 100 quiet jobs would make 5,000 reads a second. Here the first stream
whose wait ends reads, and every stream of that job and user asking within ``window_s``
gets that read's answer: at most one read per job and user a window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._reads: dict[K, tuple[float, asyncio.Future[V]]] = {}
        self._pruned_at = clock()

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """``read()``'s answer, or the answer of the read for ``key`` begun less than
        ``window_s`` ago (under way or done). A failed read is not kept: the next caller
        reads again."""
        now = self._clock()
        self._prune(now)
        known = self._reads.get(key)
        if known is None or now - known[0] >= self._window_s:
            future = asyncio.ensure_future(read())
            future.add_done_callback(lambda done: self._forget_failed(key, done))
            known = self._reads[key] = (now, future)
        # Shielded: one caller going away (its stream cancelled) does not cancel the read
        # the others wait on.
        return await asyncio.shield(known[1])

    def _forget_failed(self, key: K, done: asyncio.Future[V]) -> None:
        if done.cancelled() or done.exception() is not None:  # retrieved: no warning
            known = self._reads.get(key)
            if known is not None and known[1] is done:
                del self._reads[key]

    def _prune(self, now: float) -> None:
        """Drop reads older than the window, once a window (not on every call)."""
        if now - self._pruned_at < self._window_s:
            return
        self._pruned_at = now
        stale = [key for key, (at, _) in self._reads.items() if now - at >= self._window_s]
        for key in stale:
            del self._reads[key]

    def __len__(self) -> int:
        return len(self._reads)
