"""Schedule fire-time lateness under load: from a fire time (``schedule_fires.fire_at``) to
the fire's job being made (``schedule_fires.created_at``, stamped in the transaction that
makes it), ``schedule_lateness_p99_ms`` (target 1 s).

``count`` interval schedules (every 1 to 2 s, small campaigns) are created just before the
throughput scenario and deleted right after it, so their fires land while campaigns are
submitted at full rate, and the jobs they start add to that load. The jobs service polls at
its default SCHEDULER_POLL_S (what users get); the bench's stack allows 1 s intervals and
many schedules (:data:`bench.config.STACK_ENV`). The fires are read from the stack's
database before the schedules are deleted (deleting a schedule deletes its fires). Alone:
``python -m bench.schedules [seconds]`` starts its own stack and keeps 64 campaigns in
flight meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import select

from bench.load import campaign
from bench.stats import percentile, rounded
from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.jobs.db import create_engine
from services.jobs.scheduler import FIRES

SCHEDULES = 20
TARGET_P99_MS = 1000.0


@dataclass
class ScheduleResult:
    schedules: int
    window_s: float  # from the schedules' creation to their deletion
    lateness_ms: list[float] = field(default_factory=list)  # one per fire

    def figures(self) -> dict[str, float | None]:
        return {
            "schedule_lateness_p50_ms": rounded(percentile(self.lateness_ms, 50)),
            "schedule_lateness_p99_ms": rounded(percentile(self.lateness_ms, 99)),
        }


def _interval(n: int) -> timedelta:
    """1, 1.25, 1.5, 1.75 or 2 s: fire times spread rather than all in step."""
    return timedelta(seconds=1 + 0.25 * (n % 5))


class ScheduleLoad:
    """``count`` schedules firing while something else runs: :meth:`start`, then
    :meth:`stop` (which reads their fires and deletes them)."""

    def __init__(self, channel: grpc.aio.Channel, database_url: str, count: int = SCHEDULES):
        self._stub = jobs_pb2_grpc.JobServiceStub(channel)
        self._database_url = database_url
        self._count = count
        self._ids: list[str] = []
        self._started = 0.0

    async def start(self) -> None:
        async def create(n: int) -> str:
            interval = Duration()
            interval.FromTimedelta(_interval(n))
            request = jobs_pb2.CreateScheduleRequest(
                config=campaign(10_000 + n, max_results=2),
                spec=jobs_pb2.ScheduleSpec(interval=interval),
            )
            return (await self._stub.CreateSchedule(request)).schedule_id

        self._started = time.monotonic()
        self._ids = list(await asyncio.gather(*(create(n) for n in range(self._count))))

    async def stop(self) -> ScheduleResult:
        """Read the schedules' fires, then delete the schedules (and so their fires)."""
        window = time.monotonic() - self._started
        try:
            lateness = await self._lateness_ms()
        finally:
            await asyncio.gather(
                *(self._stub.DeleteSchedule(jobs_pb2.ScheduleRef(schedule_id=s)) for s in self._ids)
            )
        return ScheduleResult(len(self._ids), window, lateness)

    async def _lateness_ms(self) -> list[float]:
        engine = create_engine(self._database_url)
        try:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(FIRES.c.fire_at, FIRES.c.created_at).where(
                            FIRES.c.schedule_id.in_(self._ids), FIRES.c.manual.is_(False)
                        )
                    )
                ).all()
        finally:
            await engine.dispose()
        return [(made - fire_at).total_seconds() * 1000 for fire_at, made in rows]


async def _alone(seconds: float) -> ScheduleResult:
    from bench.config import FAST_WORKER_ENV, STACK_ENV
    from bench.load import CampaignLoad
    from services.cli.stack import Stack

    stack = Stack(env={**STACK_ENV, **FAST_WORKER_ENV})
    await asyncio.to_thread(stack.start)
    try:
        async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
            schedules = ScheduleLoad(channel, stack.database_url)
            load = CampaignLoad(channel, 64, lambda n: campaign(n, max_results=5))
            await schedules.start()
            load.start()
            try:
                await load.run_for(seconds)
            finally:
                await load.stop()
                result = await schedules.stop()
            return result
    finally:
        await asyncio.to_thread(stack.stop)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    result = asyncio.run(_alone(seconds))
    figures = result.figures()
    print(
        f"schedules: {len(result.lateness_ms)} fires of {result.schedules} schedules in "
        f"{result.window_s:.1f}s, lateness p50 {figures['schedule_lateness_p50_ms']} ms, "
        f"p99 {figures['schedule_lateness_p99_ms']} ms (target {TARGET_P99_MS:g})",
        file=sys.stderr,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
