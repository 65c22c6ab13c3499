"""Progress fan-out: every jobs replica hears every snapshot and forwards it to its watchers.

The replica that commits a change publishes the snapshot on ``prospect.updates.<job_id>``
(core NATS); each replica subscribes to all of them and hands each to the local queues of
that job's watchers. On a connection without echo (the jobs service's), the replica hands
its own snapshots to its watchers directly, saving them the round trip through the server.
A slow watcher's queue drops its oldest entries, never the newest, so the terminal
snapshot always gets through (docs/design.md allows coalescing under load).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from prospect.v1 import jobs_pb2
from services.common.bus import UPDATES_WILDCARD, updates_subject

log = logging.getLogger(__name__)

QUEUE_LIMIT = 256


class Fanout:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._watchers: dict[str, set[asyncio.Queue[jobs_pb2.JobUpdate]]] = defaultdict(set)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(UPDATES_WILDCARD, cb=self._on_update)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, job_id: str, update: jobs_pb2.JobUpdate) -> None:
        """Announce a committed snapshot to every replica (this one included)."""
        if self._nc.options.get("no_echo"):
            self._deliver(job_id, update)
        await self._nc.publish(updates_subject(job_id), update.SerializeToString())

    async def _on_update(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        if job_id in self._watchers:
            self._deliver(job_id, jobs_pb2.JobUpdate.FromString(msg.data))

    def wake_all(self) -> None:
        """Hand every watcher an empty update (version 0: never newer than a snapshot), so
        those waiting for the next snapshot wake now (the jobs service's shutdown)."""
        empty = jobs_pb2.JobUpdate()
        for job_id in list(self._watchers):
            self._deliver(job_id, empty)

    def _deliver(self, job_id: str, update: jobs_pb2.JobUpdate) -> None:
        for queue in self._watchers.get(job_id, ()):
            if queue.full():
                queue.get_nowait()  # coalesce: drop the oldest, keep the newest
            queue.put_nowait(update)

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Queue[jobs_pb2.JobUpdate]]:
        """A queue receiving every snapshot of ``job_id`` announced while inside the block."""
        queue: asyncio.Queue[jobs_pb2.JobUpdate] = asyncio.Queue(QUEUE_LIMIT)
        self._watchers[job_id].add(queue)
        try:
            yield queue
        finally:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[job_id]
