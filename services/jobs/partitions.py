"""Which jobs replica applies which job's reports: one owner per partition at a time.

The events stream maps every job's subject onto one of ``REPORT_PARTITIONS`` partitions
(a subject transform in :mod:`services.common.bus`: the server hashes the job id, so the
same job always lands in the same partition), and each partition has a durable consumer
of its own. The jobs replicas share the partitions: each announces itself in the KV bucket
``PROSPECT_JOBS_REPLICAS`` every :data:`HEARTBEAT_S` and reads who else is there; an entry
not renewed for :data:`MEMBER_TTL_S` expires. Every replica computes the same assignment
from the same member list by rendezvous hashing (each partition goes to the member with the
highest hash of member and partition), so no coordinator is needed and only the partitions
of a replica that came or went move.

So in steady state a job's reports are applied by one replica, in order, and two replicas
never race on one job. While partitions move (a replica started, stopped or died), two
replicas may briefly read one partition; that stays correct, since every transaction is
guarded (the job's version, the applied report ids) and runs again on a conflict
(:mod:`services.jobs.changes`). A dead replica's partitions wait at most
:data:`MEMBER_TTL_S` for a new owner, and its unacknowledged reports are redelivered to it
after ``ACK_WAIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from services.common import bus

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# A replica that stopped renewing its entry for this long is gone; its partitions move.
MEMBER_TTL_S = 5.0


def _weight(member: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()


def assignment(members: Iterable[str], partitions: int) -> dict[int, str]:
    """The owner of each partition among ``members`` (rendezvous hashing)."""
    ranked = sorted(set(members))
    if not ranked:
        return {}
    return {p: max(ranked, key=lambda member: _weight(member, p)) for p in range(partitions)}


def owned_by(member: str, members: Iterable[str], partitions: int) -> frozenset[int]:
    """The partitions ``member`` owns when ``members`` are live (itself included)."""
    owners = assignment({member, *members}, partitions)
    return frozenset(p for p, owner in owners.items() if owner == member)


class Membership:
    """This replica's place among the live jobs replicas."""

    def __init__(self, js: JetStreamContext, partitions: int, replicas: int = 1) -> None:
        self._js = js
        self._partitions = partitions
        self._replicas = replicas
        self.member = f"replica-{uuid.uuid4().hex[:16]}"

    async def _bucket(self) -> KeyValue:
        return await self._js.create_key_value(
            KeyValueConfig(
                bucket=bus.MEMBERS_BUCKET,
                history=1,
                ttl=MEMBER_TTL_S,
                storage=StorageType.MEMORY,  # liveness only: nothing to keep over a restart
                replicas=self._replicas,
            )
        )

    async def assignments(self, stop: asyncio.Event) -> AsyncIterator[frozenset[int]]:
        """The partitions this replica owns: now, then again each time they change, until
        ``stop``. While NATS cannot be reached, the last assignment stands.

        Members are followed with one watch of the bucket (not a listing per look): a
        member is live while its last heartbeat arrived less than MEMBER_TTL_S ago here,
        and gone at once when it deletes its entry on leaving."""
        kv: KeyValue | None = None
        watcher: KeyValue.KeyWatcher | None = None
        seen: dict[str, float] = {}  # member -> when its last heartbeat arrived
        owned: frozenset[int] | None = None
        failing = False
        try:
            while not stop.is_set():
                deadline = time.monotonic() + HEARTBEAT_S
                try:
                    if kv is None or watcher is None:
                        kv = await self._bucket()
                        watcher = await kv.watchall()
                    await kv.put(self.member, b"1")
                    await _follow(watcher, seen, deadline)
                    failing = False
                except Exception as exc:
                    if not failing:  # once per outage
                        log.warning("replica membership not renewed: %r", exc)
                    failing = True
                    # The bucket lives in memory: a restarted nats-server has lost it.
                    await _stopped(watcher)
                    kv = watcher = None
                now = time.monotonic()
                live = {m for m, at in seen.items() if now - at < MEMBER_TTL_S} | {self.member}
                if not failing or owned is None:
                    mine = owned_by(self.member, live, self._partitions)
                    if mine != owned:
                        owned = mine
                        log.info(
                            "%s applies reports of partition(s) %s (%d replica(s) live)",
                            self.member, sorted(owned) or "none", len(live),
                        )  # fmt: skip
                        yield owned
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, deadline - time.monotonic()))
        finally:
            await _stopped(watcher)
            if kv is not None:
                # Leaving: the others take this replica's partitions at their next look.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(kv.delete(self.member), 2)


async def _follow(watcher: KeyValue.KeyWatcher, seen: dict[str, float], until: float) -> None:
    """Take the bucket's updates into ``seen`` until the monotonic time ``until``."""
    while (left := until - time.monotonic()) > 0:
        try:
            entry = await watcher.updates(timeout=left)
        except TimeoutError:
            return
        if entry is None:  # the end of the entries present when the watch began
            continue
        if entry.operation in ("DEL", "PURGE"):
            seen.pop(entry.key, None)
        else:
            seen[entry.key] = time.monotonic()


async def _stopped(watcher: KeyValue.KeyWatcher | None) -> None:
    if watcher is not None:
        with contextlib.suppress(Exception):
            await watcher.stop()
