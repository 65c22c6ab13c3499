"""A job's discovery, paid for once: what its paid calls got, and who is making them.

The stall watchdog may queue a job's discovery again while the first attempt's task merely
waits in the queue, and JetStream redelivers a task whose worker died after its search was
paid; both used to pay for the same search twice. Two entries per job in the
``PROSPECT_DISCOVERY`` bucket (created with the topology, in ``services.common.bus``) stop
that:

- ``memo.<job_id>`` (:class:`Memo`, a ``DiscoveryMemo``): the search's places and each
  place's details, written after each paid step (never between a rate-limit slot and its
  request). Any later delivery or attempt starts from it and pays only for what it lacks;
  with everything there it only scores and reports.
- ``lease.<job_id>`` (:func:`hold_lease`, a ``DiscoveryLease``): single flight. A delivery
  takes it before its first paid call, created when absent or compare-and-set over an
  expired one, renews it while it runs, and releases it when done. One that finds it held
  by another live delivery is told to come back (:class:`LeaseHeld`); a holder killed
  leaves it to expire a lease period after its last renewal, about when JetStream
  redelivers its task, which then takes it over.

Writes are compare-and-set (the lease through :func:`services.common.kvswap.swap`; the
memo merges what another delivery wrote before it writes again). Leases compare wall
clocks (``time.time``) across processes, so the hosts' clocks must agree (NTP), as for
the rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable

import nats.errors
from google.protobuf.message import DecodeError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from prospect.v1 import work_pb2
from services.common.errors import ProspectError
from services.common.kvswap import swap
from services.common.providers import PlaceDetails, PlaceSummary

log = logging.getLogger(__name__)

# How long a delivery that found the lease held waits before it looks again: until the
# lease would expire, within these bounds (a holder renews it long before it expires).
RETRY_MIN_S, RETRY_MAX_S = 1.0, 5.0


def to_place(details: PlaceDetails, score: int = 0) -> work_pb2.Place:
    """``details`` as a ``Place``, scored ``score``."""
    return work_pb2.Place(
        place_id=details.place_id,
        name=details.name,
        address=details.address,
        phone=details.phone,
        website=details.website,
        rating=details.rating,
        review_count=details.review_count,
        business_status=details.business_status,
        types=list(details.types),
        confidence_score=score,
        address_complete=details.address_complete,
    )


def _details_of(place: work_pb2.Place) -> PlaceDetails:
    return PlaceDetails(
        place_id=place.place_id,
        name=place.name,
        address=place.address,
        phone=place.phone,
        website=place.website,
        rating=place.rating,
        review_count=place.review_count,
        business_status=place.business_status,
        types=tuple(place.types),
        address_complete=place.address_complete,
    )


class DiscoveryBusy(ProspectError):
    """Another delivery is making this job's discovery calls: try again in ``retry_after``
    seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LeaseHeld(DiscoveryBusy):
    """The job's lease is held by another delivery, live as far as its expiry says."""


class LeaseLost(DiscoveryBusy):
    """This delivery's lease was taken over (it went unrenewed past its expiry)."""


class Memo:
    """What one job's discovery has got so far, as every delivery of it sees it.

    Changes (:meth:`note_search`, :meth:`note_details`) stay in memory until
    :meth:`save`."""

    def __init__(self, kv: KeyValue | None, job_id: str) -> None:
        """``kv`` None: kept in memory only (for calls nobody bills)."""
        self._kv = kv
        self._key = f"memo.{job_id}"
        self._record = work_pb2.DiscoveryMemo()
        self._details: dict[str, PlaceDetails] = {}
        self._revision: int | None = None  # of the entry read or written last
        self._changes = self._saved = 0
        self._saving = asyncio.Lock()

    @classmethod
    async def load(cls, kv: KeyValue, job_id: str) -> Memo:
        """The job's memo as stored (empty when none or unreadable). Raises
        ``nats.errors.Error`` when it cannot be read."""
        memo = cls(kv, job_id)
        await memo._read()
        return memo

    @property
    def searched(self) -> bool:
        """Whether the search answered (see :attr:`found`)."""
        return self._record.searched

    @property
    def found(self) -> list[PlaceSummary]:
        """The places the search found, in its order."""
        return [
            PlaceSummary(p.place_id, p.name, p.address, tuple(p.types)) for p in self._record.found
        ]

    def details(self) -> list[PlaceDetails]:
        """The details got so far of the places found, in the search's order."""
        found = (self._details.get(p.place_id) for p in self._record.found)
        return [d for d in found if d is not None]

    def lacking(self) -> list[str]:
        """Ids of the places found whose details are not in the memo."""
        return [p.place_id for p in self._record.found if p.place_id not in self._details]

    @property
    def complete(self) -> bool:
        """Searched, with every place's details: nothing left to pay for."""
        return self.searched and not self.lacking()

    def note_search(self, places: Iterable[PlaceSummary]) -> None:
        """The search answered with ``places``."""
        self._record.searched = True
        del self._record.found[:]
        self._record.found.extend(
            work_pb2.Place(place_id=p.place_id, name=p.name, address=p.address, types=p.types)
            for p in places
        )
        self._changes += 1

    def note_details(self, details: PlaceDetails) -> None:
        self._details[details.place_id] = details
        self._changes += 1

    async def save(self) -> None:
        """Store what was noted since the last save, merged with what other deliveries
        stored meanwhile. A memo NATS cannot take is logged and left for the next save:
        losing it only makes a later delivery pay again."""
        if self._kv is None:
            return
        async with self._saving:  # saves of one delivery's concurrent steps: one at a time
            try:
                while self._changes != self._saved:
                    await self._write()
            except nats.errors.Error as exc:
                log.warning("%s not saved (%r); a later try may pay again", self._key, exc)

    async def _write(self) -> None:
        assert self._kv is not None  # save() writes only a stored memo
        noted = self._changes
        self._record.ClearField("details")
        self._record.details.extend(to_place(d) for d in self._details.values())
        value = self._record.SerializeToString()
        try:
            if self._revision is None:
                self._revision = await self._kv.create(self._key, value)
            else:
                self._revision = await self._kv.update(self._key, value, last=self._revision)
            self._saved = noted
        except KeyWrongLastSequenceError:
            # Another delivery wrote first (it took over a lease this one let expire): keep
            # what both got.
            await self._read()

    async def _read(self) -> None:
        """Merge the stored memo into this one (its search when this one has none)."""
        if self._kv is None:
            return
        try:
            entry = await self._kv.get(self._key)
        except KeyNotFoundError:  # never written, or expired
            self._revision = None
            return
        self._revision = entry.revision
        try:
            stored = work_pb2.DiscoveryMemo.FromString(entry.value or b"")
        except DecodeError:
            log.warning("%s unreadable: discovery starts afresh", self._key)
            return
        if stored.searched and not self._record.searched:
            self._record.searched = True
            self._record.found.extend(stored.found)
        for place in stored.details:
            self._details.setdefault(place.place_id, _details_of(place))


class Lease:
    """One delivery's hold on a job's discovery calls (see :func:`hold_lease`)."""

    def __init__(self, kv: KeyValue, key: str, holder: str, ttl_s: float) -> None:
        self._kv = kv
        self._key = key
        self.holder = holder
        self._ttl_s = ttl_s
        self._revision: int | None = None
        self.expires_at = 0.0
        self.lost = False

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this delivery surely still holds the lease: a
        paid call must not leave once another delivery may have taken it over."""
        if self.lost or time.time() >= self.expires_at:
            raise LeaseLost(f"lease {self._key} lost: another delivery took it", RETRY_MIN_S)

    async def take(self) -> None:
        """Hold the lease until a lease period from now: create it, or take it over once
        its holder let go or let it expire. Raises :class:`LeaseHeld` while another delivery
        holds it, ``nats.errors.Error`` when NATS cannot say."""
        expires_at = 0.0

        def step(value: bytes | None) -> bytes:
            nonlocal expires_at
            now = time.time()
            current = _read_lease(value)  # never taken, or expired out of the bucket: empty
            if current.holder not in ("", self.holder) and current.expires_at > now:
                wait = min(RETRY_MAX_S, max(RETRY_MIN_S, current.expires_at - now))
                raise LeaseHeld(f"discovery under way in {current.holder}", wait)
            expires_at = now + self._ttl_s
            lease = work_pb2.DiscoveryLease(holder=self.holder, expires_at=expires_at)
            return lease.SerializeToString()

        self._revision = (await swap(self._kv, self._key, step)).revision
        self.expires_at = expires_at

    async def renew(self) -> None:
        """Push the expiry a lease period from now; marks the lease :attr:`lost` when
        another delivery took it over. Raises ``nats.errors.Error`` when NATS cannot take
        the write."""
        if self.lost:
            return
        try:
            self._revision = await self._write(self._revision, time.time() + self._ttl_s)
        except KeyWrongLastSequenceError:
            self.lost = True

    async def keep(self) -> None:
        """Renew every third of the lease period until cancelled (as the task runner sends
        ``in_progress``); a renewal NATS cannot take is tried again at the next one."""
        while not self.lost:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self.renew()
            except nats.errors.Error as exc:
                log.warning("lease %s not renewed (%r)", self._key, exc)

    async def release(self) -> None:
        """Let go, unless another delivery holds it now, so one waiting for it goes on at
        once. A release NATS cannot take is logged: the lease then expires by itself."""
        released = work_pb2.DiscoveryLease(holder="", expires_at=0.0).SerializeToString()

        def step(value: bytes | None) -> bytes | None:
            # Read first: a renewal cancelled on its way may still have been written.
            if value is None or _read_lease(value).holder != self.holder:
                return None  # gone, or taken over meanwhile: the new holder's now
            return released

        if self.lost:
            return
        try:
            await swap(self._kv, self._key, step)
        except nats.errors.Error as exc:
            log.warning("lease %s not released (%r); it expires by itself", self._key, exc)

    async def _write(self, revision: int | None, expires_at: float) -> int:
        value = work_pb2.DiscoveryLease(holder=self.holder, expires_at=expires_at)
        data = value.SerializeToString()
        if revision is None:
            written = await self._kv.create(self._key, data)
        else:
            written = await self._kv.update(self._key, data, last=revision)
        self.expires_at = expires_at
        return int(written)


def _read_lease(value: bytes | None) -> work_pb2.DiscoveryLease:
    try:
        return work_pb2.DiscoveryLease.FromString(value or b"")
    except DecodeError:
        return work_pb2.DiscoveryLease()  # unreadable: as good as released


@contextlib.asynccontextmanager
async def hold_lease(kv: KeyValue, job_id: str, holder: str, ttl_s: float) -> AsyncIterator[Lease]:
    """The lease on ``job_id``'s discovery calls, held for the body by ``holder`` (a
    delivery's report-id prefix), renewed every ``ttl_s / 3`` and released on the way out.
    Raises :class:`LeaseHeld` while another live delivery holds it."""
    # Made unique: a task published twice (past the duplicate window) has two deliveries
    # with one report-id prefix.
    lease = Lease(kv, f"lease.{job_id}", f"{holder}~{secrets.token_hex(4)}", ttl_s)
    await lease.take()
    keeping = asyncio.create_task(lease.keep())
    try:
        yield lease
    finally:
        keeping.cancel()
        await lease.release()
