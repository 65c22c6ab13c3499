"""Live-progress latency: from a worker publishing a report (``report_published_at``, the
worker's ``time.time_ns()``) to a watcher receiving the update it caused (same clock).

Campaigns of 10 leads with providers at 300 ms a call, a few in flight, each followed by a
WatchJob stream: reports arrive spread out as in real use, so the figure is the path's
own latency (JetStream, the jobs service applying the report and committing, the snapshot
fan-out, the gRPC stream), not a queue's. Updates without a stamp (the first snapshot,
resyncs) are not counted; an update that several reports were coalesced into carries the
stamp of the oldest of them, so it counts the longest wait among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from bench.load import CampaignLoad, campaign

WARMUP_S = 1.0


@dataclass
class ProgressResult:
    latencies_ms: list[float]
    campaigns: int
    inflight: int


async def run_progress(channel: grpc.aio.Channel, seconds: float, inflight: int) -> ProgressResult:
    load = CampaignLoad(channel, inflight, lambda n: campaign(n, max_results=10))
    load.start()
    try:
        await load.run_for(WARMUP_S + seconds)
    finally:
        stopped = await load.stop()
    latencies = load.seen.latencies(load.started_at + WARMUP_S, stopped)
    return ProgressResult(latencies, len(load.seen.completions), inflight)
