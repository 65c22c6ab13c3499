"""The server of :mod:`bench.grpc_only`: a grpc.aio server with one server-streaming method
of raw bytes, and nothing else (its imports kept to grpc and the snapshot's message, so its
RSS is gRPC's and Python's own). ``python -m bench.grpc_only_server`` serves on a free
loopback port, prints the port, and ends when the bench closes its stdin.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc

from bench.children import exit_with_parent
from prospect.v1 import jobs_pb2

SERVICE = "bench.GrpcOnly"
WATCH, SEND = "Watch", "Send"


def _snapshot(key: int) -> jobs_pb2.JobUpdate:
    """A snapshot as the jobs service sends one of a running campaign."""
    job = jobs_pb2.Job(
        id=f"job_{key:032x}",
        campaign_id=f"camp_{key:032x}",
        user_id="bench-user",
        status=jobs_pb2.JOB_STATUS_PROCESSING,
        stage=jobs_pb2.STAGE_ENRICHING,
        progress=60,
        version=7,
        attempts=1,
        max_attempts=3,
    )
    job.config.business_type = "coffee shop"
    job.config.location = "Seattle, WA"
    job.config.max_results = 3
    job.metrics.businesses_found = 20
    job.metrics.qualified_leads = 3
    job.metrics.leads_enriched = 1
    for stamp in (job.created_at, job.started_at, job.updated_at):
        stamp.GetCurrentTime()
    return jobs_pb2.JobUpdate(job=job, message="Enriched 1 of 3 leads")


# A message and the future of the one after it; None: the stream ends.
Link = tuple[bytes, "asyncio.Future[Link]"] | None


async def _serve() -> None:
    """Serve on a free loopback port, print it, and run until the bench ends us."""
    # Each key's next message, as a future all its streams await: a stream holds nothing
    # of its own but its call and handler (a queue a stream added 4 KB to each).
    loop = asyncio.get_running_loop()
    heads: dict[int, asyncio.Future[Link]] = {}

    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        key = int(request)
        head = heads.setdefault(key, loop.create_future())
        yield _snapshot(key).SerializeToString()
        while (link := await head) is not None:
            message, head = link
            yield message

    async def send(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """A JSON list of ``[offset_s, key]``: a snapshot to every stream of ``key`` at
        each offset from now, in order (a key no stream watches is skipped), then the end
        of every stream."""
        schedule = sorted((float(at), int(key)) for at, key in json.loads(request))
        updates = {key: _snapshot(key) for key in heads}
        started = time.monotonic()
        for at, key in schedule:
            if key not in heads:
                continue
            if (wait := at - (time.monotonic() - started)) > 0:
                await asyncio.sleep(wait)
            update = updates[key]
            update.report_published_at.FromNanoseconds(time.time_ns())
            following: asyncio.Future[Link] = loop.create_future()
            heads[key].set_result((update.SerializeToString(), following))
            heads[key] = following
        for head in heads.values():
            head.set_result(None)
        return b""

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            WATCH: grpc.unary_stream_rpc_method_handler(watch),
            SEND: grpc.unary_unary_rpc_method_handler(send),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    exit_with_parent()
    asyncio.run(_serve())
