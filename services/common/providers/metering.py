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

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from services.common.errors import ProspectError
from services.common.providers.base import Charge

# Publishes an intent as a report of its own; returns that report's id.
PublishIntent = Callable[[Charge], Awaitable[str]]


class WorkStopped(ProspectError):
    """The job was cancelled or failed: no more paid calls for it."""


@dataclass
class Meter:
    """The paid calls of one task delivery."""

    publish_intent: PublishIntent
    stopped: Callable[[], bool] = lambda: False  # is the job cancelled or failed?
    corrections: list[Charge] = field(default_factory=list)
    intents: list[tuple[str, Charge]] = field(default_factory=list)  # (report id, charge)

    def check(self, provider: str, operation: str) -> None:
        """Refuse (WorkStopped) if the job is stopped: no paid request for it leaves."""
        if self.stopped():
            raise WorkStopped(f"{provider} {operation} not made: the job is stopped")

    async def open(self, provider: str, operation: str, price: float) -> None:
        """Before a paid request waits for its slot: refuse if the job is stopped, else put
        the call on the books at its list price."""
        self.check(provider, operation)
        charge = Charge(provider, operation, price, metered=True)
        self.intents.append((await self.publish_intent(charge), charge))

    def settle(self, provider: str, operation: str, price: float, actual: float) -> None:
        """The answer came: record what the provider billed against the intent."""
        delta = round(actual - price, 6)
        if delta:
            self.corrections.append(Charge(provider, operation, delta, metered=True))

    def reportable(self, charges: list[Charge]) -> tuple[list[Charge], list[tuple[str, Charge]]]:
        """What a report must carry for ``charges``: unmetered ones as they are, the
        corrections of metered ones, and (again) the intents published since the last
        report. Clears what it hands out."""
        out = [c for c in charges if not c.metered] + self.corrections
        intents = self.intents
        self.corrections, self.intents = [], []
        return out, intents

    @property
    def pending(self) -> bool:
        """Whether anything is left to report."""
        return bool(self.corrections or self.intents)


current_meter: ContextVar[Meter | None] = ContextVar("prospect_meter", default=None)
