"""Live-progress latency: from a worker publishing a report (``report_published_at``, the
worker's ``time.time_ns()``) to a watcher receiving the update it caused (same clock).

Campaigns of 10 leads with providers at 300 ms a call, a few in flight, each followed by a
WatchJob stream: reports arrive spread out as in real use, so the figure is the path's
own latency (JetStream, the jobs service applying the report and committing, the snapshot
fan-out, the gRPC stream), not a queue's. Updates without a stamp (the first snapshot,
resyncs) are not counted; an update that several reports were coalesced into carries the
stamp of the oldest of them, so it counts the longest wait among them.

With ``other`` (the web process's Server-Sent Events, :func:`bench.sse.sse_follow`), every
other campaign is followed that way instead, recorded apart, and the run lasts twice as
long: the load is the same, each way gets about as many campaigns as a run without, and
the two figures come from the same moments, so they compare even on a noisy machine.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import grpc

from bench.load import CampaignLoad, Follow, Observed, campaign, follow
from prospect.v1 import jobs_pb2

WARMUP_S = 1.0


@dataclass
class ProgressResult:
    latencies_ms: list[float]
    campaigns: int
    inflight: int


async def run_progress(
    channel: grpc.aio.Channel, seconds: float, inflight: int, other: Follow | None = None
) -> tuple[ProgressResult, ProgressResult | None]:
    """The WatchJob figures, and those of ``other`` when given (see the module's doc)."""
    other_seen = Observed()
    turns = itertools.count()

    async def follow_job(job_id: str, seen: Observed) -> jobs_pb2.Job:
        if other is not None and next(turns) % 2:
            return await other(job_id, other_seen)
        return await follow(load.stub, job_id, seen)

    load = CampaignLoad(channel, inflight, lambda n: campaign(n, max_results=10), follow_job)
    load.start()
    try:
        await load.run_for(WARMUP_S + seconds * (2 if other is not None else 1))
    finally:
        stopped = await load.stop()
    start = load.started_at + WARMUP_S

    def result(seen: Observed) -> ProgressResult:
        return ProgressResult(seen.latencies(start, stopped), len(seen.completions), inflight)

    return result(load.seen), result(other_seen) if other is not None else None
