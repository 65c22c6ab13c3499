"""Progress fan-out: every jobs replica hears every snapshot and forwards it to its watchers.

The replica that commits a change publishes the snapshot on ``prospect.updates.<job_id>``
(core NATS); each replica subscribes to all of them and hands each to the mailboxes of
that job's watchers. On a connection without echo (the jobs service's), the replica hands
its own snapshots to its watchers directly, saving them the round trip through the server.
A mailbox holds only the newest snapshot its watcher has not taken (:class:`Mailbox`), so a
watcher that fell behind skips to where its job is now, and the terminal snapshot always
gets through (docs/design.md allows coalescing under load).

The fan-out also keeps, for :data:`RECENT_S`, the newest snapshot it heard of each job
(and the job's first, from its submit on this replica): a watch opened meanwhile by the
job's owner starts from it instead of reading the job (that read was 7-9% of the jobs
service's CPU in the throughput bench, where every campaign is watched from its submit).
Listening first and then taking the newest snapshot heard keeps the guarantee the read
gave: whatever is announced after comes through the mailbox. A snapshot lost on the way
is caught up by the resync below, as for any watcher.

Core NATS delivers at most once, so a snapshot can be lost (a server restart). Every
:data:`RESYNC_S` the fan-out reads the jobs it has heard nothing of for that long, in one
query, and hands each to its watchers like any snapshot (they send it only if it is newer
than what they sent). One timer and one read for every stream of the replica: a timeout
around each stream's wait made and cancelled a timer at every wait (a tenth of the jobs
process's time with 10,000 streams open), and streams re-reading their job each, even
sharing the read, spent another tenth waiting on it together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from prospect.v1 import jobs_pb2
from services.common.bus import UPDATES_WILDCARD, updates_subject

log = logging.getLogger(__name__)

# A job's watchers read it again when nothing was heard of it for this long, so a snapshot
# lost on core NATS (e.g. during a server restart) is caught up, terminal one included.
RESYNC_S = 2.0
RESYNC_READ_AT_ONCE = 500  # jobs a resync query asks for
# How long a snapshot heard of a job opens a watch without a read, and for how many jobs.
RECENT_S = 30.0
RECENT_MAX = 4096
# What wakes a watcher to read its job itself: at shutdown, and for a job the resync did
# not find. Version 0 is older than every snapshot, so it is never sent.
LOOK_AGAIN = jobs_pb2.JobUpdate()

# The resync's read: the snapshots of those of the jobs that exist, by job id.
ReadSnapshots = Callable[[list[str]], Awaitable[dict[str, jobs_pb2.JobUpdate]]]


class Fanout:
    def __init__(self, nc: NATS, resync_s: float = RESYNC_S, recent_s: float = RECENT_S) -> None:
        self._nc = nc
        self._resync_s = resync_s
        self._recent_s = recent_s
        # job id -> (when heard, its newest snapshot), oldest first
        self._recent: OrderedDict[str, tuple[float, jobs_pb2.JobUpdate]] = OrderedDict()
        self._read: ReadSnapshots | None = None
        self._watchers: dict[str, set[Mailbox]] = defaultdict(set)
        self._heard: dict[str, float] = {}  # job id -> when a snapshot of it last came
        self._sub: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(UPDATES_WILDCARD, cb=self._on_update)

    def read_with(self, read: ReadSnapshots) -> None:
        """How the resync reads jobs (without: their watchers are told to look again and
        read each their own)."""
        self._read = read

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def publish(self, job_id: str, update: jobs_pb2.JobUpdate) -> None:
        """Announce a committed snapshot to every replica (this one included)."""
        if self._nc.options.get("no_echo"):
            self._deliver(job_id, update)
        await self._nc.publish(updates_subject(job_id), update.SerializeToString())

    async def _on_update(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        if job_id in self._watchers or job_id in self._recent:
            self._deliver(job_id, jobs_pb2.JobUpdate.FromString(msg.data))

    def remember(self, job_id: str, update: jobs_pb2.JobUpdate) -> None:
        """Keep ``update`` as the newest snapshot of ``job_id`` heard (unless a newer one
        was), for :meth:`recent`."""
        if not update.job.version:
            return  # LOOK_AGAIN
        known = self._recent.get(job_id)
        if known is not None and known[1].job.version > update.job.version:
            return
        self._recent[job_id] = (time.monotonic(), update)
        self._recent.move_to_end(job_id)
        if len(self._recent) > RECENT_MAX:
            self._recent.popitem(last=False)

    def recent(self, job_id: str, user_id: str) -> jobs_pb2.JobUpdate | None:
        """The newest snapshot of ``user_id``'s job ``job_id`` heard in the last
        :data:`RECENT_S`, without its report stamp (it is no delivery of that report);
        None when there is none (nor for another user's job: the caller's read says
        NotFound)."""
        known = self._recent.get(job_id)
        if known is None or time.monotonic() - known[0] > self._recent_s:
            return None
        update = known[1]
        if update.job.user_id != user_id:
            return None
        return jobs_pb2.JobUpdate(job=update.job, message=update.message)

    def wake_all(self) -> None:
        """Hand every watcher :data:`LOOK_AGAIN`, so those waiting for the next snapshot
        wake now (the jobs service's shutdown)."""
        for job_id in list(self._watchers):
            self._deliver(job_id, LOOK_AGAIN)

    def _deliver(self, job_id: str, update: jobs_pb2.JobUpdate) -> None:
        self.remember(job_id, update)
        mailboxes = self._watchers.get(job_id)
        if not mailboxes:
            return
        self._heard[job_id] = time.monotonic()
        # Read once for all: a job's 100 watchers reading it each was 8% of the jobs
        # process's time with 10,000 streams open (bench/watchers.py).
        stamp = _stamp(update)
        for mailbox in mailboxes:
            mailbox.put(update, stamp)

    async def _resync_forever(self) -> None:
        """Every resync period, the jobs heard of no more for a period read and handed to
        their watchers; ends when no one watches (:meth:`watch` starts it again)."""
        while self._watchers:
            await asyncio.sleep(self._resync_s)
            now = time.monotonic()
            quiet = [job for job, at in self._heard.items() if now - at >= self._resync_s]
            for start in range(0, len(quiet), RESYNC_READ_AT_ONCE):
                await self._resync(quiet[start : start + RESYNC_READ_AT_ONCE])
                # SQLite reads on the event loop's thread: let others in between queries.
                await asyncio.sleep(0)

    async def _resync(self, job_ids: list[str]) -> None:
        """Hand the watchers of ``job_ids`` their jobs as stored now; :data:`LOOK_AGAIN`
        for a job not found (its watchers read it and end NotFound)."""
        found: dict[str, jobs_pb2.JobUpdate] = {}
        if self._read is not None:
            try:
                found = await self._read(job_ids)
            except Exception:  # the database unreachable, say: the next period tries again
                log.warning("watch resync: reading %d jobs failed", len(job_ids), exc_info=True)
                return
        for job_id in job_ids:
            if job_id not in found:
                self._recent.pop(job_id, None)  # gone (a retention purge): not kept either
            if job_id in self._watchers:  # still watched after the read
                self._deliver(job_id, found.get(job_id, LOOK_AGAIN))

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Mailbox]:
        """A mailbox receiving every snapshot of ``job_id`` announced while inside the
        block, the job read again after a quiet spell, and :data:`LOOK_AGAIN` at shutdown."""
        mailbox = Mailbox()
        self._watchers[job_id].add(mailbox)
        self._heard.setdefault(job_id, time.monotonic())  # the watcher reads it first
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._resync_forever())
        try:
            yield mailbox
        finally:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(mailbox)
                if not watchers:
                    del self._watchers[job_id]
                    del self._heard[job_id]


class Mailbox:
    """The newest snapshot of a job its watcher has not taken yet, and the watcher waiting
    for one: a stream that fell behind its job sends where the job is now, not every step
    it missed. With 10,000 streams on one replica, writing every step kept the event loop
    seconds behind (bench/watchers.py), and a queue a stream (three deques and an event)
    weighed more than the stream's own state.

    The snapshot taken carries the oldest report stamp among those folded into it, as the
    batch's own coalescing does (services/jobs/publishing.py), so the delivery latency
    counts from the longest wait. Snapshots are shared by every watcher of the job: one
    whose stamp must change is copied, never changed in place."""

    __slots__ = ("_oldest", "_stamp", "_update", "_waiter")

    def __init__(self) -> None:
        self._update: jobs_pb2.JobUpdate | None = None
        self._stamp = 0  # the held snapshot's own report stamp (ns; 0: none)
        self._oldest = 0  # the oldest report stamp folded in (ns; 0: none)
        self._waiter: asyncio.Future[None] | None = None

    def put(self, update: jobs_pb2.JobUpdate, stamp: int) -> None:
        """Hold ``update`` unless a newer one is held; ``stamp`` is its report stamp
        (:func:`_stamp`, read by the caller once for every mailbox of the job)."""
        held = self._update
        if held is None or update.job.version >= held.job.version:
            self._update, self._stamp = update, stamp
        if stamp and (not self._oldest or stamp < self._oldest):
            self._oldest = stamp
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> jobs_pb2.JobUpdate:
        """The newest snapshot put since the last get, waiting for one if none is."""
        while self._update is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        update, oldest, stamp = self._update, self._oldest, self._stamp
        self._update, self._oldest = None, 0
        if not oldest or oldest == stamp:
            return update
        folded = jobs_pb2.JobUpdate()
        folded.CopyFrom(update)
        folded.report_published_at.FromNanoseconds(oldest)
        return folded


def _stamp(update: jobs_pb2.JobUpdate) -> int:
    """The update's report stamp in nanoseconds (0: none)."""
    return update.report_published_at.ToNanoseconds()
