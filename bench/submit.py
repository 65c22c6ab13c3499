"""Submit latency: SubmitCampaign round trips from concurrent clients, each on its own
channel (its own HTTP/2 connection), each waiting for its answer before the next submit.

Run with the jobs service alone (no workers), so the figure is the API's: validation, the
transaction (job, campaign, outbox row) and the publish of the discovery task. Every
request carries an idempotency key, as a retrying client's would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import grpc

from bench.load import campaign
from bench.procstat import Sampler
from prospect.v1 import jobs_pb2, jobs_pb2_grpc

WARMUP_PER_CLIENT = 3  # untimed: connection set-up, first-call paths


@dataclass
class SubmitResult:
    latencies_ms: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)  # every job submitted (to cancel after)
    wall_s: float = 0.0
    clients: int = 0
    cpu_cores: dict[str, float] = field(default_factory=dict)  # per process, while timed

    @property
    def per_s(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s > 0 else 0.0


async def run_submit(
    addr: str, total: int, clients: int, sampler: Sampler | None = None
) -> SubmitResult:
    result = SubmitResult(clients=clients)
    counts = [total // clients + (i < total % clients) for i in range(clients)]

    async def submit(stub: jobs_pb2_grpc.JobServiceStub, n: int) -> None:
        request = jobs_pb2.SubmitCampaignRequest(
            config=campaign(n, max_results=5), idempotency_key=uuid.uuid4().hex
        )
        response = await stub.SubmitCampaign(request, timeout=30)
        result.job_ids.append(response.job_id)

    async def warm_up(index: int, stub: jobs_pb2_grpc.JobServiceStub) -> None:
        for k in range(WARMUP_PER_CLIENT):
            await submit(stub, 1_000_000 + index * 100 + k)

    async def timed(index: int, stub: jobs_pb2_grpc.JobServiceStub) -> None:
        for k in range(counts[index]):
            started = time.perf_counter()
            await submit(stub, index * total + k)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)

    channels = [grpc.aio.insecure_channel(addr) for _ in range(clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 15)
        stubs = [jobs_pb2_grpc.JobServiceStub(c) for c in channels]
        await asyncio.gather(*(warm_up(i, s) for i, s in enumerate(stubs)))
        if sampler is not None:
            sampler.start()
        started, mono = time.perf_counter(), time.monotonic()
        await asyncio.gather(*(timed(i, s) for i, s in enumerate(stubs)))
        result.wall_s = time.perf_counter() - started
        if sampler is not None:
            await sampler.stop()
            result.cpu_cores = sampler.cpu_share(mono, time.monotonic())
    finally:
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
    return result
