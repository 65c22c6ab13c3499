"""Speedup over the sequential design: one campaign of 10 leads, providers at 300 ms a call,
through the stack (submit to terminal update, seen by a watcher) and one call after another
in one process (:mod:`bench.sequential`, run as its own process in the same bench run)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass

import grpc

from bench.config import SLOW_LATENCY_MS, SLOW_WORKER_ENV, log
from bench.load import Observed, follow
from bench.sequential import SequentialRun
from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import REPO_ROOT

BUSINESS_TYPE, LOCATION, LEADS = "coffee shop", "Seattle, WA", 10


@dataclass
class SpeedupResult:
    stack_walls_s: list[float]
    sequential: SequentialRun

    @property
    def stack_wall_s(self) -> float:
        return statistics.median(self.stack_walls_s)

    @property
    def speedup(self) -> float:
        return self.sequential.wall_s / self.stack_wall_s


def campaign_config() -> jobs_pb2.CampaignConfig:
    return jobs_pb2.CampaignConfig(
        business_type=BUSINESS_TYPE,
        location=LOCATION,
        max_results=LEADS,
        min_confidence_score=0,
        verify_emails=True,
    )


async def run_stack_campaigns(channel: grpc.aio.Channel, runs: int) -> list[float]:
    """Wall time of the campaign through the stack, ``runs`` times one after another."""
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    walls = []
    for _ in range(runs):
        started = time.monotonic()
        request = jobs_pb2.SubmitCampaignRequest(config=campaign_config())
        job_id = (await stub.SubmitCampaign(request, timeout=30)).job_id
        job = await follow(stub, job_id, Observed(), limit_s=120)
        walls.append(time.monotonic() - started)
        if job.status != jobs_pb2.JOB_STATUS_COMPLETED or job.metrics.leads_enriched != LEADS:
            raise RuntimeError(
                f"speedup campaign ended {jobs_pb2.JobStatus.Name(job.status)} with "
                f"{job.metrics.leads_enriched} leads enriched: {job.error}"
            )
        log(f"speedup: campaign through the stack took {walls[-1]:.2f}s")
    return walls


class SequentialBaseline:
    """:mod:`bench.sequential` as a child process (killed by :meth:`aclose` if unfinished)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        args = [
            str(SLOW_LATENCY_MS),
            SLOW_WORKER_ENV["SANDBOX_MAX_PLACES"],
            BUSINESS_TYPE,
            LOCATION,
            str(LEADS),
        ]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sequential", *args,
            stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
        )  # fmt: skip

    async def result(self) -> SequentialRun:
        assert self._proc is not None
        out, _ = await self._proc.communicate()
        if self._proc.returncode != 0:
            raise RuntimeError(f"bench.sequential exited with {self._proc.returncode}")
        data = json.loads(out.decode().strip().splitlines()[-1])
        run = SequentialRun(float(data["wall_s"]), int(data["calls"]), int(data["leads"]))
        log(f"speedup: sequential run took {run.wall_s:.2f}s ({run.calls} calls)")
        return run

    async def aclose(self) -> None:
        """Kill the child if it is still running, and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
