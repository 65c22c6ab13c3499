"""Budgets that hold across redeliveries: a task's spend ledger, shared in NATS KV.

A task with a budget (an enrichment lead's allowance, a discovery's ``budget_limit``) may be
delivered again after its worker died, and the new delivery cannot know from the task what
its predecessor spent. So spending goes through a ledger entry per task in the
``PROSPECT_ALLOWANCES`` bucket (created with the topology, in ``services.common.bus``),
holding the micro-dollars reserved or spent so far under one key:

- before a paid call, its list price is *reserved* (:meth:`Allowance.reserve`): added to the
  entry with a compare-and-set, refused when the total would pass the cap. Never between a
  rate-limit slot and its request: that round trip would bunch requests up.
- after the call, what it did not cost is *released* (:meth:`Allowance.release`): list price
  minus billed (all of it for a call that failed).
- a worker killed in between leaves its reservation standing: a redelivery may then skip a
  call for budget the provider never billed, but never spends past the cap.

Every change is a compare-and-set (:func:`services.common.kvswap.swap`). A cap of 0 means
no budget: no ledger traffic at all.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import nats.errors
from nats.js.kv import KeyValue

from services.common.errors import ProviderError
from services.common.kvswap import swap
from services.common.money import usd_to_micros
from services.common.providers.base import Charge

log = logging.getLogger(__name__)

R = TypeVar("R")


def billed_micros(charges: Iterable[Charge]) -> int:
    """What ``charges`` bill, in micro-dollars."""
    return sum(usd_to_micros(c.cost_usd) for c in charges)


class Allowance:
    """What one task may still spend, as every delivery of it sees it."""

    def __init__(self, kv: KeyValue, key: str, cap_micros: int) -> None:
        """``key`` names the task's ledger entry (``lead.<id>``, ``job.<id>``);
        ``cap_micros`` is its budget, 0 for none."""
        self._kv = kv
        self._key = key
        self.cap_micros = max(0, cap_micros)

    async def reserve(self, micros: int) -> bool:
        """Add ``micros`` to the ledger unless the total would pass the cap; whether it did."""
        if not self.cap_micros or micros <= 0:
            return True

        def add(total: int) -> int | None:
            return total + micros if total + micros <= self.cap_micros else None

        return await self._swap(add)

    async def release(self, micros: int) -> None:
        """Take ``micros`` off the ledger (never below 0): reserved but not spent. Raises
        ``nats.errors.Error`` when the ledger cannot be written."""
        if not self.cap_micros or micros <= 0:
            return
        await self._swap(lambda total: max(0, total - micros))

    async def spend(
        self,
        price_micros: int,
        call: Callable[[], Awaitable[R]],
        charges_of: Callable[[R], Iterable[Charge]],
    ) -> R | None:
        """``call()``'s result when ``price_micros`` could be reserved, None (nothing called)
        when it could not. After the call, releases what it did not bill (``charges_of``
        its result), or all of it when the call failed with a ProviderError (a failed call
        bills nothing). Any other way out (the job stopped, the task cancelled) keeps the
        reservation, since a request may have left; so does a release NATS cannot take."""
        if not await self.reserve(price_micros):
            return None
        try:
            result = await call()
        except ProviderError:
            await self._release_after_call(price_micros)
            raise
        await self._release_after_call(price_micros - billed_micros(charges_of(result)))
        return result

    async def _release_after_call(self, micros: int) -> None:
        # The call is made and paid for: losing its result to a ledger write would only
        # make the task pay again. An unreleased reservation errs on the safe side.
        try:
            await self.release(micros)
        except nats.errors.Error as exc:
            log.warning("ledger %s: %d micro-dollars left reserved (%r)", self._key, micros, exc)

    async def _swap(self, change: Callable[[int], int | None]) -> bool:
        """Compare-and-set the total to ``change(total)``; False (nothing written) when
        ``change`` refuses with None."""
        refused = False

        def step(value: bytes | None) -> bytes | None:
            nonlocal refused
            total = int(value or b"0")
            new = change(total)
            refused = new is None
            return None if new is None else str(new).encode()

        await swap(self._kv, self._key, step)
        return not refused
