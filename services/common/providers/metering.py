"""Metering: every paid call is on the books before it is made.

A worker that dies mid-call cannot report what the call cost, and the provider bills it all
the same. So before each real provider request, the worker publishes the call at its list
price (an *intent*); when the answer arrives, the task's report carries the correction
(actual minus list: a Hunter search that found nothing is free, a failed request is not
billed). If the worker dies in between, the intent stands: the job is charged the list
price of a call the provider most likely billed. A call made twice (a task redelivered after
its worker died) is two intents: both count.

The meter travels in a context variable set per task, so the adapters need no extra
arguments; the sandbox, which bills nobody, is not metered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from services.common.providers.base import Charge

PublishIntent = Callable[[Charge], Awaitable[None]]


@dataclass
class MeteredCall:
    """What the adapter learns from the answer: what the provider actually billed."""

    actual_usd: float = 0.0
    metered: bool = True  # False when no meter was running (no intent was published)


@dataclass
class Meter:
    """The paid calls of one task delivery."""

    publish_intent: PublishIntent
    corrections: list[Charge] = field(default_factory=list)

    @asynccontextmanager
    async def call(self, provider: str, operation: str, price: float) -> AsyncIterator[MeteredCall]:
        """Around one paid request: publish the intent, then record the correction."""
        await self.publish_intent(Charge(provider, operation, price, metered=True))
        call = MeteredCall()
        try:
            yield call
        finally:
            delta = round(call.actual_usd - price, 6)
            if delta:
                self.corrections.append(Charge(provider, operation, delta, metered=True))

    def reportable(self, charges: list[Charge]) -> list[Charge]:
        """What a report must carry for ``charges``: unmetered ones as they are, and the
        corrections of metered ones (their intents were published already). Clears the
        corrections it hands out."""
        out = [c for c in charges if not c.metered] + self.corrections
        self.corrections = []
        return out


current_meter: ContextVar[Meter | None] = ContextVar("prospect_meter", default=None)


@asynccontextmanager
async def metered(provider: str, operation: str, price: float) -> AsyncIterator[MeteredCall]:
    """Meter one paid request when the running task has a meter (workers always do)."""
    meter = current_meter.get()
    if meter is None:
        yield MeteredCall(metered=False)
        return
    async with meter.call(provider, operation, price) as call:
        yield call
