"""Server-Sent Events of a job: one ``update`` event per WatchJob update, its ``id`` the
job's version, so a client that reconnects with ``Last-Event-ID`` gets only later ones.

A WatchJob stream that ends UNAVAILABLE (a jobs replica shutting down) or breaks is opened
again with ``after_version`` = the last version sent, like the CLI's ``watch_until_done``;
the event stream itself ends after the terminal update.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import is_retryable, is_terminal
from services.web.transcode import dumps, to_json

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
RETRY_FOR_S = 30.0  # how long a broken watch is reopened before the stream gives up
T = TypeVar("T")

Send = Callable[[bytes], Awaitable[None]]


def event(update: jobs_pb2.JobUpdate) -> bytes:
    """``id: <version>``, ``event: update``, ``data: <the update as one JSON line>``."""
    data = dumps(to_json(update))
    return f"id: {update.job.version}\nevent: update\ndata: {data}\n\n".encode()


def error_event(data: object) -> bytes:
    """``event: error`` with the error JSON: the watch failed after the stream began."""
    return f"event: error\ndata: {dumps(data)}\n\n".encode()


HEARTBEAT = b": keep-alive\n\n"


async def ticking(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """The items of ``source``, and ``None`` whenever ``interval`` passes without one (the
    read under way is kept, not cancelled)."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()


async def stream_job(
    stub: jobs_pb2_grpc.JobServiceStub,
    job_id: str,
    after_version: int,
    metadata: Sequence[tuple[str, str]],
    send: Send,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    retry_for: float = RETRY_FOR_S,
) -> None:
    """Send every update of ``job_id`` above ``after_version`` until the terminal one
    (or until a WatchJob that ended OK: the job was already final at ``after_version``).
    Errors other than a broken stream are raised."""
    last = after_version
    backoff, failing_since = 0.2, None
    loop = asyncio.get_running_loop()
    while True:
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_version=last)
        call = stub.WatchJob(request, metadata=tuple(metadata))
        try:
            async for update in ticking(aiter(call), heartbeat_s):
                if update is None:
                    await send(HEARTBEAT)
                    continue
                backoff, failing_since = 0.2, None
                if update.job.version <= last:
                    continue  # a replay after a reconnect
                last = update.job.version
                await send(event(update))
                if is_terminal(update.job.status):
                    return
            return
        except grpc.aio.AioRpcError as err:
            if not is_retryable(err):
                raise
            log.info(
                "watch of %s ended %s; watching again after version %d",
                job_id, err.code().name, last,
            )  # fmt: skip
        finally:
            call.cancel()
        now = loop.time()
        failing_since = now if failing_since is None else failing_since
        if now - failing_since > retry_for:
            raise TimeoutError(f"could not watch {job_id} again for {retry_for:.0f}s")
        await asyncio.sleep(backoff)
        backoff = min(2.0, backoff * 2)
