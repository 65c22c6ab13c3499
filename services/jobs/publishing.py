"""What a committed transaction announces: stop notices to the workers, the new snapshots
to every watcher, and the queued tasks (its outbox rows) to JetStream.

Nothing is announced before its transaction commits, so a watcher never sees a state the
database does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS

from prospect.v1 import jobs_pb2
from services.common import bus
from services.jobs import machine as m
from services.jobs.convert import job_proto
from services.jobs.fanout import Fanout
from services.jobs.models import JobRow, OutboxRow
from services.jobs.outbox import Outbox


@dataclass
class Applied:
    """What one transition leaves to do once committed."""

    job_id: str
    outbox: list[OutboxRow] = field(default_factory=list)
    stop_work: bool = False
    job: JobRow | None = None  # the row as stored (the snapshots' fixed fields)
    snapshots: list[m.Snapshot] = field(default_factory=list)
    stamp: Timestamp | None = None  # when the report behind it was published
    finished: m.Status | None = None  # the final status the job reached, if it did
    cause: str | None = None  # the traceparent of the span that made it (tracing on)

    def updates(self, snapshots: list[m.Snapshot]) -> list[jobs_pb2.JobUpdate]:
        assert self.job is not None
        out = []
        for snap in snapshots:
            update = jobs_pb2.JobUpdate(job=job_proto(self.job, snap.state), message=snap.message)
            if self.stamp is not None and self.stamp.seconds:
                update.report_published_at.CopyFrom(self.stamp)
            out.append(update)
        return out


def coalesced(batch: tuple[Applied, ...]) -> list[tuple[str, list[jobs_pb2.JobUpdate]]]:
    """The snapshots a committed batch publishes, per job: every version when one report
    changed the job, only the latest when several did ("under load, changes may be
    coalesced"); built only for what is published. A coalesced update carries the publish
    time of the oldest report folded into it, so the live-progress latency counts from
    there."""
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    oldest: dict[str, Timestamp] = {}
    for i, applied in enumerate(batch):
        if not applied.snapshots:
            continue
        job_id, stamp = applied.job_id, applied.stamp
        last[job_id] = i
        count[job_id] = count.get(job_id, 0) + 1
        if stamp is not None and stamp.seconds:
            if job_id not in oldest or stamp.ToNanoseconds() < oldest[job_id].ToNanoseconds():
                oldest[job_id] = stamp
    out = []
    for job_id, i in sorted(last.items(), key=lambda item: item[1]):
        snapshots = batch[i].snapshots
        if count[job_id] == 1:
            out.append((job_id, batch[i].updates(snapshots)))
            continue
        latest = replace(batch[i], stamp=oldest.get(job_id))
        out.append((job_id, latest.updates(snapshots[-1:])))
    return out


class Publisher:
    """Announces what committed transactions caused."""

    def __init__(self, nc: NATS, fanout: Fanout, outbox: Outbox) -> None:
        self._nc = nc
        self._fanout = fanout
        self._outbox = outbox

    async def after_commit(self, *batch: Applied) -> None:
        """Stop notices first (workers start no paid call for a stopped job), then the
        snapshots, then the queued messages (in the background: the outbox rows make them
        certain to go, the cancellation bucket's entry included, and the next batch need
        not wait for JetStream's acks). Raises only if NATS fails; watchers then catch up
        from the database and the outbox relay publishes the rows."""
        stops = [applied.job_id for applied in batch if applied.stop_work]
        for job_id in stops:
            await self._nc.publish(bus.CANCEL_SUBJECT, job_id.encode())
        if stops:
            # On the server before a CancelJob answers: a worker hears of the stop about
            # when the caller does, and starts no paid call after that.
            await self._nc.flush(timeout=1)
        for job_id, updates in coalesced(batch):
            for update in updates:
                await self._fanout.publish(job_id, update)
        rows = [row for applied in batch for row in applied.outbox]
        if rows:
            self._outbox.publish_soon(rows)
