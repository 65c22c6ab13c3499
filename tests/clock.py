"""A clock the test moves: ``clock()`` is the time, ``clock.now`` sets it (for code that
takes a ``clock: Callable[[], float]``, such as the cancel registry, the JWKS cache and the
per-user limits)."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
