"""Metering: a paid request is on the books from the moment it leaves the worker.

A worker that dies mid-call cannot report what the call cost, and the provider bills it all
the same; a worker that dies before its request left must leave nothing, since nobody
billed it. So the line is drawn at the rate-limit slot, right before the request is sent:

- **At the slot**, the meter checks the job (:meth:`Meter.check`): a cancelled or failed
  job raises :class:`WorkStopped`, nothing is sent and nothing is booked. Otherwise
  :meth:`Meter.open` puts the request on the books at its list price: an *intent*,
  published as a report of its own without waiting for JetStream's ack (a core-NATS
  publish with the intent's report id as ``Nats-Msg-Id``; the events stream stores it).
  A round trip there would sit between slot and request and bunch requests up on the way,
  and the provider would count some over its rate limit.
- **Every attempt is a request**: a retried call opens one intent per attempt.
- **When the attempt ends**, :meth:`Meter.settle` records what the provider bills for it:
  nothing for a failed attempt, ``billed(value)`` or the list price for an answer.
- **The task's next report** (published with an ack) carries every intent opened or
  settled since the previous report (:meth:`Meter.reportable`): list price, whether the
  answer came, what it bills. The jobs service books a settled intent it has not applied
  yet at what it bills, and corrects one it applied at list price by the difference; so a
  lost intent publish (NATS down) is booked by that copy. No amount on the wire is ever
  negative.

What is on the books, then: a request that never left (the task stopped, or was killed,
while waiting for its slot) costs nothing; a request whose task reported after it costs
what the provider bills; a request in flight when its worker was killed costs its list
price (the provider may have billed less: Hunter bills only searches that find emails).
Books and bill differ by at most the requests in flight at the moments workers are killed.
A request made twice (a task redelivered after its worker died) counts twice.

The meter travels in a context variable set per task, so the adapters need no extra
arguments; the sandbox, which bills nobody, is not metered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

from prospect.v1 import work_pb2
from services.common.errors import ProspectError
from services.common.providers.base import Charge

# Publishes an intent (a charge at list price) as a report of its own, without waiting for
# an ack; returns that report's id.
PublishIntent = Callable[[Charge], Awaitable[str]]


class WorkStopped(ProspectError):
    """The job was cancelled or failed: no more paid calls for it."""


def charge_proto(charge: Charge) -> work_pb2.Charge:
    """A charge as it travels on a report."""
    return work_pb2.Charge(
        provider=charge.provider, operation=charge.operation, cost_usd=charge.cost_usd
    )


@dataclass(eq=False)
class Request:
    """One paid request on the books: its intent at list price, then what it bills."""

    report_id: str  # the intent's own report
    charge: Charge  # at the list price
    settled: bool = False  # the attempt ended: billed_usd is what the provider bills
    billed_usd: float = 0.0

    def intent(self) -> work_pb2.Intent:
        return work_pb2.Intent(
            report_id=self.report_id,
            charge=charge_proto(self.charge),
            settled=self.settled,
            billed_usd=self.billed_usd,
        )


class Meter:
    """The paid requests of one task delivery, and which of them the next report carries."""

    def __init__(
        self, publish_intent: PublishIntent, stopped: Callable[[], bool] = lambda: False
    ) -> None:
        """``stopped`` says whether the job is cancelled or failed."""
        self._publish_intent = publish_intent
        self._stopped = stopped
        self._unreported: list[Request] = []  # opened or settled since the last report

    def check(self, provider: str, operation: str) -> None:
        """Refuse (WorkStopped) if the job is stopped: no paid request for it leaves."""
        if self._stopped():
            raise WorkStopped(f"{provider} {operation} not made: the job is stopped")

    async def open(self, provider: str, operation: str, price: float) -> Request:
        """At the slot, right before the request leaves: refuse if the job is stopped
        (nothing booked), else put the request on the books at its list ``price`` (its
        intent is published, not waited for) and return it, to :meth:`settle`."""
        self.check(provider, operation)
        charge = Charge(provider, operation, price, metered=True)
        request = Request(await self._publish_intent(charge), charge)
        self._unreported.append(request)
        return request

    def settle(self, request: Request, billed_usd: float) -> None:
        """The attempt ended: the provider bills ``billed_usd`` for it (0 when it failed).
        Settling again changes nothing."""
        if request.settled:
            return
        request.settled, request.billed_usd = True, billed_usd
        if request not in self._unreported:  # reported unsettled: report it again, settled
            self._unreported.append(request)

    def reportable(self, charges: list[Charge]) -> tuple[list[Charge], list[work_pb2.Intent]]:
        """What a report must carry for ``charges``: the unmetered ones as they are (their
        metered ones travel as intents), and every intent opened or settled since the last
        report. Clears what it hands out."""
        unmetered = [c for c in charges if not c.metered]
        intents = [request.intent() for request in self._unreported]
        self._unreported = []
        return unmetered, intents

    @property
    def pending(self) -> bool:
        """Whether any intent is left to report."""
        return bool(self._unreported)


current_meter: ContextVar[Meter | None] = ContextVar("prospect_meter", default=None)
