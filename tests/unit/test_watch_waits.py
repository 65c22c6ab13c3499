"""How a WatchJob stream waits for its job's next snapshot (no gRPC, no NATS, no database).

A quiet stream holds no asyncio task besides its own: with 10,000 streams open, a task
for the queue and one for the shutdown event, made and cancelled at every wait (every
resync period when quiet), kept the jobs service's event loop so busy that gRPC core
cancelled new WatchJob calls it had not taken up in time; one timer, the fan-out's, serves
every quiet stream. Shutdown still wakes a waiting stream at once (the fan-out hands it an
empty update), and a quiet spell still re-reads. A stream behind its job sends the newest
snapshot waiting, not every step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest
from nats.aio.client import Client as NATS

from prospect.v1 import jobs_pb2
from services.common.errors import NotFound, Unavailable
from services.jobs.api import JobService
from services.jobs.commands import Commands
from services.jobs.convert import snapshot_proto
from services.jobs.fanout import Fanout
from services.jobs.models import JobRow, transient, utcnow
from services.jobs.page_tokens import PageTokens

GUARD_S = 30.0  # against a hang only; nothing is asserted about timing
JOB = "job_0123456789abcdef0123456789abcdef"


def job_row(version: int) -> JobRow:
    now = utcnow()
    return transient(
        JobRow,
        {
            "id": JOB, "campaign_id": f"cmp_{JOB}", "user_id": "alice", "type": "campaign",
            "status": "PROCESSING", "stage": "ENRICHING", "progress": 50, "version": version,
            "config": {"business_type": "cafe", "location": "Here"}, "metrics": {},
            "error": "", "message": f"v{version}", "attempts": 1, "max_attempts": 3,
            "idempotency_key": None, "created_at": now, "started_at": now,
            "completed_at": None, "updated_at": now,
        },
    )  # fmt: skip


class Rows:
    """The database as the watch reads it: the job at ``version`` (or gone, or failing),
    reads counted: a stream's own (:meth:`job`) and the fan-out's resync
    (:meth:`snapshots`)."""

    def __init__(self) -> None:
        self.version = 1
        self.reads = 0
        self.resyncs = 0
        self.gone = False
        self.failing = False
        self.resynced = asyncio.Event()

    async def job(self, user_id: str, job_id: str) -> JobRow:
        self.reads += 1
        if self.gone:
            raise NotFound(f"job {job_id} not found")
        return job_row(self.version)

    async def snapshots(self, job_ids: list[str]) -> dict[str, jobs_pb2.JobUpdate]:
        self.resyncs += 1
        self.resynced.set()
        if self.failing:
            raise ConnectionError("database unreachable")
        return {} if self.gone else {JOB: snapshot_proto(job_row(self.version))}


def service(rows: Rows, resync_s: float = 3600.0) -> tuple[JobService, Fanout]:
    """The service, its fan-out waking quiet watchers every ``resync_s`` (by default,
    never within a test)."""
    fanout = Fanout(NATS(), resync_s)  # never connected: nothing here publishes
    sessions: Any = None
    commands = cast(Commands, rows)
    return JobService(sessions, commands, fanout, PageTokens(b"k" * 32)), fanout


Stream = AsyncGenerator[jobs_pb2.JobUpdate, None]


def watch(svc: JobService) -> Stream:
    """A watch of JOB by its owner from version 0, as WatchJob runs it."""
    return cast(Stream, svc._watch("alice", JOB, 0))


async def next_version(stream: Stream) -> int:
    async with asyncio.timeout(GUARD_S):
        return (await anext(stream)).job.version


async def test_a_waiting_stream_holds_no_task_of_its_own() -> None:
    rows = Rows()
    svc, fanout = service(rows)
    streams = [watch(svc) for _ in range(50)]
    assert [await next_version(s) for s in streams] == [1] * 50
    waiting = [asyncio.create_task(next_version(s)) for s in streams]
    for _ in range(10):
        await asyncio.sleep(0)  # every stream now waits for the next snapshot
    assert not any(task.done() for task in waiting)
    # Theirs, this test's and the fan-out's resync timer, no more.
    assert len(asyncio.all_tasks()) == len(waiting) + 2

    rows.version = 2
    fanout._deliver(JOB, jobs_pb2.JobUpdate(job=jobs_pb2.Job(id=JOB, version=2)))  # heard
    assert await asyncio.gather(*waiting) == [2] * 50
    for stream in streams:
        await stream.aclose()


async def test_shutdown_wakes_a_waiting_stream_which_ends_unavailable_after_the_latest() -> None:
    rows = Rows()  # only the shutdown can wake the stream
    svc, _ = service(rows)
    stream = watch(svc)
    assert await next_version(stream) == 1
    waiting = asyncio.create_task(next_version(stream))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()

    rows.version = 2  # committed, its snapshot not (yet) heard
    svc.begin_shutdown()
    assert await waiting == 2  # the latest, read afresh
    with pytest.raises(Unavailable, match="after_version=2"):
        await next_version(stream)


async def test_a_quiet_spell_reads_the_job_again() -> None:
    rows = Rows()
    svc, fanout = service(rows, resync_s=0.01)
    stream = watch(svc)
    assert await next_version(stream) == 1
    rows.version = 2  # its snapshot lost on the way: only a re-read finds it
    assert await next_version(stream) == 2
    assert rows.resyncs >= 1 and rows.reads == 1  # the fan-out's read, not the stream's
    await stream.aclose()
    await fanout.stop()


async def test_the_watchers_of_a_quiet_job_get_one_read_of_it() -> None:
    rows = Rows()
    svc, fanout = service(rows)
    streams = [watch(svc) for _ in range(20)]
    assert [await next_version(s) for s in streams] == [1] * 20
    rows.version = 2  # its snapshot lost on the way: only a re-read finds it
    waiting = [asyncio.create_task(next_version(s)) for s in streams]
    await fanout._resync([JOB])  # what the resync timer does for a quiet job
    assert await asyncio.gather(*waiting) == [2] * 20
    assert (rows.reads, rows.resyncs) == (20, 1)  # each stream's first read, and one more

    # Read again with nothing new: nothing is sent, the streams wait on.
    waiting = [asyncio.create_task(next_version(s)) for s in streams]
    await fanout._resync([JOB])
    for _ in range(10):
        await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for stream in streams:
        await stream.aclose()
    await fanout.stop()


async def test_a_job_the_resync_does_not_find_ends_its_streams_not_found() -> None:
    rows = Rows()
    svc, fanout = service(rows)
    stream = watch(svc)
    assert await next_version(stream) == 1
    rows.gone = True
    waiting = asyncio.create_task(next_version(stream))
    await fanout._resync([JOB])  # not found: its watchers look again themselves
    with pytest.raises(NotFound):
        await waiting


async def test_a_failed_resync_read_is_tried_again_at_the_next_period() -> None:
    rows = Rows()
    rows.failing = True
    svc, fanout = service(rows, resync_s=0.01)
    stream = watch(svc)
    assert await next_version(stream) == 1
    rows.version = 2
    waiting = asyncio.create_task(next_version(stream))
    async with asyncio.timeout(GUARD_S):
        while rows.resyncs < 3:  # failed, and failed again: the timer goes on
            rows.resynced.clear()
            await rows.resynced.wait()
    assert not waiting.done()
    rows.failing = False
    assert await waiting == 2
    await stream.aclose()
    await fanout.stop()


async def test_the_resync_timer_ends_when_no_one_watches_and_starts_with_the_next() -> None:
    rows = Rows()
    svc, fanout = service(rows, resync_s=0.01)
    stream = watch(svc)
    assert await next_version(stream) == 1
    await stream.aclose()
    ticker = fanout._ticker
    assert ticker is not None
    async with asyncio.timeout(GUARD_S):
        await ticker  # its next tick finds no watcher: it ends
    assert not fanout._heard

    again = watch(svc)
    rows.version = 3
    assert await next_version(again) == 3
    rows.version = 4  # lost on the way: the new timer's resync finds it
    assert await next_version(again) == 4
    await again.aclose()
    await fanout.stop()


def heard(
    fanout: Fanout, version: int, stamp_ns: int = 0, terminal: bool = False
) -> jobs_pb2.JobUpdate:
    """The fan-out hands every watcher of JOB the snapshot at ``version``."""
    status = jobs_pb2.JOB_STATUS_COMPLETED if terminal else jobs_pb2.JOB_STATUS_PROCESSING
    update = jobs_pb2.JobUpdate(job=jobs_pb2.Job(id=JOB, version=version, status=status))
    if stamp_ns:
        update.report_published_at.FromNanoseconds(stamp_ns)
    fanout._deliver(JOB, update)
    return update


async def test_a_stream_behind_its_job_skips_to_the_newest_snapshot_stamped_by_the_oldest() -> None:
    svc, fanout = service(Rows())
    stream, other = watch(svc), watch(svc)
    assert await next_version(stream) == 1 and await next_version(other) == 1
    shared = [heard(fanout, 2, stamp_ns=2_000), heard(fanout, 4, stamp_ns=4_000)]
    shared.append(heard(fanout, 3, stamp_ns=3_000))  # another replica's, heard late

    sent = await anext(stream)  # it was behind by three snapshots: it sends one
    assert sent.job.version == 4
    assert sent.report_published_at.ToNanoseconds() == 2_000  # the longest wait folded in
    # The snapshots are the other stream's too: none was changed.
    assert [u.report_published_at.ToNanoseconds() for u in shared] == [2_000, 4_000, 3_000]
    assert await next_version(other) == 4

    heard(fanout, 5, stamp_ns=5_000)  # one at a time: sent as it is
    alone = await anext(stream)
    assert (alone.job.version, alone.report_published_at.ToNanoseconds()) == (5, 5_000)
    await stream.aclose()
    await other.aclose()


async def test_a_stream_behind_ends_on_the_terminal_snapshot() -> None:
    svc, fanout = service(Rows())
    stream = watch(svc)
    assert await next_version(stream) == 1
    for version in range(2, 9):
        heard(fanout, version)
    heard(fanout, 9, terminal=True)
    assert await next_version(stream) == 9
    with pytest.raises(StopAsyncIteration):
        await next_version(stream)


def announced(version: int, user: str = "alice", stamp_ns: int = 0) -> jobs_pb2.JobUpdate:
    """A snapshot of JOB as the fan-out hears it (announced after a commit)."""
    update = snapshot_proto(job_row(version))
    update.job.user_id = user
    if stamp_ns:
        update.report_published_at.FromNanoseconds(stamp_ns)
    return update


async def test_a_watch_opened_after_a_snapshot_was_heard_starts_from_it_without_a_read() -> None:
    rows = Rows()
    rows.version = 2
    svc, fanout = service(rows)
    fanout.remember(JOB, announced(2, stamp_ns=1_000))
    fanout._deliver(JOB, announced(3, stamp_ns=2_000))  # announced by a replica: the newest
    fanout.remember(JOB, announced(2))  # older than what was heard: kept out
    stream = watch(svc)
    async with asyncio.timeout(GUARD_S):
        first = await anext(stream)
    assert first.job.version == 3 and rows.reads == 0
    # Not a delivery of the report behind it: no stamp to time the delivery by.
    assert not first.HasField("report_published_at")
    await stream.aclose()


async def test_another_users_watch_never_gets_a_snapshot_heard_of_the_job() -> None:
    rows = Rows()
    rows.gone = True  # as another user's read finds it: NotFound
    svc, fanout = service(rows)
    fanout.remember(JOB, announced(1, user="alice"))
    stream = cast(Stream, svc._watch("mallory", JOB, 0))
    with pytest.raises(NotFound):
        await next_version(stream)
    assert rows.reads == 1


async def test_a_snapshot_heard_too_long_ago_or_of_a_job_gone_is_read_again() -> None:
    rows = Rows()
    svc, fanout = service(rows)
    fanout._recent_s = 0.0  # every snapshot heard is too old already
    fanout.remember(JOB, announced(5))
    assert await next_version(watch(svc)) == 1 and rows.reads == 1  # read: as stored

    svc, fanout = service(rows)
    fanout.remember(JOB, announced(5))
    rows.gone = True  # purged meanwhile: the resync finds it gone and forgets it
    await fanout._resync([JOB])
    with pytest.raises(NotFound):
        await next_version(watch(svc))
