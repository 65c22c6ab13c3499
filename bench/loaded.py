"""Live updates under load (``progress_loaded_p99_ms``): the report-to-watcher latency while
campaigns arrive at 70% of the rate the throughput scenario measured as the maximum.

The throughput scenario keeps a fixed number of campaigns in flight and so runs the stack
flat out: every update then waits behind full report batches, and its progress figure is a
saturated queue's. Real load sits below the maximum. Here campaigns of the throughput shape
(zero-latency sandbox, 10 businesses, 5 leads) are submitted at a fixed rate, ``share``
of that maximum, open loop (one every 1/rate seconds whatever the stack does, as users
would), each followed by a WatchJob stream; the latency of every stamped update in the
steady state is recorded, as :mod:`bench.progress` does under light load. The target (issue
19) is at most three times the light-load ``progress_p99_ms``.

If the stack falls behind (campaigns in flight keep growing), the run says so: the figure
is then a queue's again, and the achieved rate is reported beside the offered one.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from dataclasses import dataclass

import grpc

from bench.config import log
from bench.harness import Harness
from bench.load import Observed, campaign, cancel_jobs, follow
from bench.stats import percentile, rate
from prospect.v1 import jobs_pb2, jobs_pb2_grpc

SHARE = 0.7  # of the throughput scenario's campaigns per second
WARMUP_SHARE = 0.2  # of the run, left out of the figures
MAX_INFLIGHT = 2000  # a stack this far behind is not keeping up: stop offering more


@dataclass
class LoadedResult:
    offered_per_s: float
    achieved_per_s: float  # campaigns completed a second in the steady state
    latencies_ms: list[float]
    most_inflight: int
    errors: int

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


async def run_loaded(harness: Harness, seconds: float, max_per_s: float) -> LoadedResult:
    """Campaigns at ``SHARE`` of ``max_per_s`` for ``seconds``, each watched to its end."""
    offered = SHARE * max_per_s
    stub = jobs_pb2_grpc.JobServiceStub(harness.channel)
    seen = Observed()
    running: set[asyncio.Task[None]] = set()
    submitted: set[str] = set()
    most = 0
    errors = 0

    async def one(n: int) -> None:
        nonlocal errors
        try:
            request = jobs_pb2.SubmitCampaignRequest(config=campaign(n, max_results=5))
            job_id = (await stub.SubmitCampaign(request, timeout=30)).job_id
            submitted.add(job_id)
            await follow(stub, job_id, seen)
            submitted.discard(job_id)
        except (grpc.aio.AioRpcError, RuntimeError) as exc:
            errors += 1
            if errors <= 3:
                log(f"loaded: campaign error: {exc}")

    started = time.monotonic()
    try:
        for n in itertools.count():
            due = started + n / offered
            if due - started >= seconds:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(running) >= MAX_INFLIGHT:
                log(f"loaded: {MAX_INFLIGHT} campaigns in flight: the stack is not keeping up")
                break
            task = asyncio.create_task(one(n))
            running.add(task)
            task.add_done_callback(running.discard)
            most = max(most, len(running))
        ended = time.monotonic()
    finally:
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await cancel_jobs(stub, sorted(submitted))
    start = started + WARMUP_SHARE * seconds
    achieved = rate(seen.completions, start, ended) if ended > start else math.nan
    return LoadedResult(offered, achieved, seen.latencies(start, ended), most, errors)
