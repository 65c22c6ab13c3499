"""The watchers scenario's streams on gRPC alone (``grpc_only_watchers_10k_*``): what a
grpc.aio server in Python holds and sends for 10,000 streams on this machine, with nothing
of prospect's own.

A server process (:mod:`bench.grpc_only_server`) has one server-streaming method
taking and sending raw bytes (a generic handler: no servicer, no interceptor, no
serializer). The bench opens the streams as :mod:`bench.watchers` does: :data:`STREAMS`
over :data:`JOBS` keys on :data:`CHANNELS` connections, at most :data:`OPEN_AT_ONCE`
waiting for their first message, then reads the server's RSS after :data:`QUIET_S` (the
RSS, as ``watchers_10k_rss_mb`` is the jobs process's).

Then the server replays the watchers scenario of the same run: for every report stamp a
stream of job ``k`` received there, a snapshot to every stream of key ``k`` at the same
moment after the first (:func:`replay`), so the snapshots come in the same bursts. A
snapshot is a ``JobUpdate`` shaped as the jobs service sends it, serialized once for all
the key's streams and stamped (``report_published_at``) as it is handed over; the bench
times it to its arrival as :mod:`bench.watchers` does, in a process whose heap is frozen
with the streams open, as there. The server stamps a snapshot when it sends it, not when
a worker published the report (no report to apply, no commit, no fan-out), and sends the
same bytes to every stream: so these figures are a floor, what no service on grpc.aio
could go under on this machine with these streams and snapshots. The server's CPU over
the sending is recorded too, per message sent. Alone (``python -m bench.grpc_only``), it
sends 5 snapshots to each stream at random moments over 12 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from bench import children
from bench.config import log
from bench.grpc_only_server import SEND, SERVICE, WATCH
from bench.load import Observed, Tracker, frozen_heap
from bench.procstat import cpu_s, rss_mb
from bench.stats import kb_each, percentile
from bench.watchers import CHANNEL_OPTIONS, CHANNELS, JOBS, OPEN_AT_ONCE, QUIET_S, STREAMS
from prospect.v1 import jobs_pb2

MODULE = "bench.grpc_only_server"
READY_TIMEOUT_S = 30.0
OPEN_ALL_TIMEOUT_S = 90.0


# The bench's side.


@dataclass
class GrpcOnlyResult:
    streams: int
    opened: int = 0
    idle_rss_mb: float = 0.0  # the server before the streams
    rss_mb: float = 0.0  # with them all open, quiet
    snapshots: int = 0  # sent to every stream of their key, after the first
    send_s: float = 0.0  # from the first to the last
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0  # over the sending, to the last stream's end

    @property
    def kb_per_stream(self) -> float:
        return kb_each(self.idle_rss_mb, self.rss_mb, self.opened)

    @property
    def cpu_us_per_message(self) -> float:
        if not self.latencies_ms:
            return float("nan")
        return 1e6 * self.server_cpu_s / len(self.latencies_ms)


async def _open(
    pool: list[grpc.aio.Channel], streams: int
) -> list[grpc.aio.UnaryStreamCall[bytes, bytes]]:
    """Open ``streams`` streams over ``pool`` as bench/watchers.py does, each read to its
    first message."""
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    calls: list[grpc.aio.UnaryStreamCall[bytes, bytes]] = []

    async def open_one(i: int) -> None:
        async with gate:
            channel = pool[(i // JOBS) % len(pool)]
            call = channel.unary_stream(f"/{SERVICE}/{WATCH}")(str(i % JOBS).encode())
            await call.read()
            calls.append(call)

    await asyncio.wait_for(
        asyncio.gather(*(open_one(i) for i in range(streams))), OPEN_ALL_TIMEOUT_S
    )
    return calls


Schedule = list[tuple[float, int]]  # (seconds from the start, key)


def replay(moments: Iterable[tuple[int, int]]) -> Schedule:
    """The schedule of ``moments`` ((key, report stamp in ns), bench/watchers.py's):
    each at its distance from the earliest."""
    moments = list(moments)
    if not moments:
        return []
    first = min(stamp for _, stamp in moments)
    return sorted(((stamp - first) / 1e9, key) for key, stamp in moments)


def at_random(per_key: int, seconds: float) -> Schedule:
    """``per_key`` snapshots to each key at random moments over ``seconds``."""
    return sorted((random.uniform(0, seconds), key) for key in range(JOBS) for _ in range(per_key))


async def run_grpc_only(schedule: Schedule, streams: int = STREAMS) -> GrpcOnlyResult:
    """Start the server, open ``streams`` streams, read its RSS, have it send the snapshots
    of ``schedule``, read every stream to its end; the server is stopped whatever
    happens."""
    send_s = schedule[-1][0] if schedule else 0.0
    result = GrpcOnlyResult(streams=streams, snapshots=len(schedule), send_s=send_s)
    proc = await children.spawn(MODULE, os.environ)
    pool: list[grpc.aio.Channel] = []
    try:
        port = int(await children.line(proc, "grpc-only server", READY_TIMEOUT_S))
        result.idle_rss_mb = rss_mb(proc.pid)
        address = f"127.0.0.1:{port}"
        pool = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(CHANNELS)
        ]
        calls = await _open(pool, streams)
        result.opened = len(calls)
        await asyncio.sleep(QUIET_S)
        result.rss_mb = rss_mb(proc.pid)
        seen = Observed()

        async def read_on(call: grpc.aio.UnaryStreamCall[bytes, bytes]) -> None:
            tracker = Tracker(WATCH, seen)  # timed as bench/watchers.py times its streams
            while (message := await call.read()) is not grpc.aio.EOF:
                now_ns, now = time.time_ns(), time.monotonic()
                tracker.update(jobs_pb2.JobUpdate.FromString(message), now, now_ns)

        with frozen_heap():  # as bench/watchers.py, with the streams open
            cpu_before = cpu_s(proc.pid)
            readers = [asyncio.create_task(read_on(call)) for call in calls]
            await pool[0].unary_unary(f"/{SERVICE}/{SEND}")(json.dumps(schedule).encode())
            await asyncio.wait_for(asyncio.gather(*readers), 120)
            result.server_cpu_s = cpu_s(proc.pid) - cpu_before
        result.latencies_ms = [ms for _, ms in seen.progress_ms]
    finally:
        for channel in pool:
            with contextlib.suppress(Exception):
                await channel.close()
        await children.stop([proc])
    return result


def summary(result: GrpcOnlyResult) -> str:
    lat = result.latencies_ms
    return (
        f"grpc only: {result.opened} of {result.streams} streams, server RSS "
        f"{result.idle_rss_mb:.1f} -> {result.rss_mb:.1f} MB; {len(lat)} messages over "
        f"{result.send_s:.1f}s, p50 {percentile(lat, 50):.0f} ms, p99 "
        f"{percentile(lat, 99):.0f} ms, server CPU {result.cpu_us_per_message:.0f} us a message"
    )


async def _alone() -> None:
    log(summary(await run_grpc_only(at_random(per_key=5, seconds=12.0))))


if __name__ == "__main__":
    asyncio.run(_alone())
