"""A burst of WatchJob calls is served, none refused before its handler runs.

The watchers of a jobs replica that stops all reconnect to the others at once. gRPC core
keeps the calls the event loop has not taken up yet in a queue, and by default refuses new
ones (CANCELLED, before any handler runs) once 1,000 wait: 2,000 streams opened at once
lost 140-209 that way on the bench stack. The jobs server raises that limit
(services/jobs/server.py, ``MAX_PENDING_CALLS``). Here 2,000 streams are opened at once
over 20 connections, on a job held still (the fake Hunter holds its answers), and every
one must get its first snapshot.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import job_service
from tests.e2e.on_fakes import campaign, running_stack
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

STREAMS, CONNECTIONS = 2000, 20
GUARD_S = 120.0  # against a hang only; nothing is asserted about timing


async def test_two_thousand_watch_calls_at_once_all_get_their_snapshot(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=5, every_domain_has_emails=True)
    fakes.hunter.hold()  # the job stays in ENRICHING: every stream stays open
    env = {"MAX_WATCHES_PER_USER": str(2 * STREAMS), "PROVIDER_TIMEOUT_S": "120"}
    with fakes, running_stack(tmp_path, fakes, env) as stack:
        async with job_service(stack.jobs_addr) as stub:
            request = jobs_pb2.SubmitCampaignRequest(config=campaign("Burstville, WA"))
            job_id = (await stub.SubmitCampaign(request, timeout=30)).job_id
        # A connection of its own per channel (gRPC would otherwise share one).
        channels = [
            grpc.aio.insecure_channel(
                stack.jobs_addr, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(CONNECTIONS)
        ]
        calls = []
        try:
            stubs = [jobs_pb2_grpc.JobServiceStub(channel) for channel in channels]
            watch = jobs_pb2.WatchJobRequest(job_id=job_id)
            calls = [stubs[n % CONNECTIONS].WatchJob(watch) for n in range(STREAMS)]

            async def first(call: grpc.aio.UnaryStreamCall) -> str:
                try:
                    update = await call.read()
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name
                return (
                    "snapshot" if update is not grpc.aio.EOF and update.job.id == job_id else "none"
                )

            async with asyncio.timeout(GUARD_S):
                outcomes = await asyncio.gather(*(first(call) for call in calls))
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*(channel.close() for channel in channels))
            fakes.release()
    refused = {o: outcomes.count(o) for o in set(outcomes) if o != "snapshot"}
    assert not refused, f"of {STREAMS} streams: {refused}"
