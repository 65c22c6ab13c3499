"""How a WatchJob stream waits for its job's next snapshot (no gRPC, no NATS, no database).

A quiet stream holds no asyncio task besides its own: with 10,000 streams open, a task
for the queue and one for the shutdown event, made and cancelled at every wait (every
WATCH_RESYNC_S when quiet), kept the jobs service's event loop so busy that gRPC core
cancelled new WatchJob calls it had not taken up in time. Shutdown still wakes a waiting
stream at once (the fan-out hands it an empty update), and a quiet spell still re-reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest
from nats.aio.client import Client as NATS

from prospect.v1 import jobs_pb2
from services.common.errors import Unavailable
from services.jobs import api
from services.jobs.api import JobService
from services.jobs.commands import Commands
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
    """The database as the watch reads it: the job at ``version``, reads counted."""

    def __init__(self) -> None:
        self.version = 1
        self.reads = 0

    async def job(self, user_id: str, job_id: str) -> JobRow:
        self.reads += 1
        return job_row(self.version)


def service(rows: Rows) -> tuple[JobService, Fanout]:
    fanout = Fanout(NATS())  # never connected: nothing here publishes
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


async def test_a_waiting_stream_holds_no_task_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "WATCH_RESYNC_S", 3600.0)  # no quiet-spell read in this test
    rows = Rows()
    svc, fanout = service(rows)
    streams = [watch(svc) for _ in range(50)]
    assert [await next_version(s) for s in streams] == [1] * 50
    waiting = [asyncio.create_task(next_version(s)) for s in streams]
    for _ in range(10):
        await asyncio.sleep(0)  # every stream now waits for the next snapshot
    assert not any(task.done() for task in waiting)
    assert len(asyncio.all_tasks()) == len(waiting) + 1  # theirs and this test's, no more

    rows.version = 2
    fanout._deliver(JOB, jobs_pb2.JobUpdate(job=jobs_pb2.Job(id=JOB, version=2)))  # heard
    assert await asyncio.gather(*waiting) == [2] * 50
    for stream in streams:
        await stream.aclose()


async def test_shutdown_wakes_a_waiting_stream_which_ends_unavailable_after_the_latest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "WATCH_RESYNC_S", 3600.0)  # only the shutdown can wake it
    rows = Rows()
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


async def test_a_quiet_spell_reads_the_job_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "WATCH_RESYNC_S", 0.01)
    rows = Rows()
    svc, _ = service(rows)
    stream = watch(svc)
    assert await next_version(stream) == 1
    rows.version = 2  # its snapshot lost on the way: only a re-read finds it
    assert await next_version(stream) == 2
    assert rows.reads >= 2
    await stream.aclose()
