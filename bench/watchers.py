"""Many watchers: 10,000 WatchJob streams on one jobs replica, 100 on each of 100 campaigns.

The campaigns are submitted with no worker running, so they stay queued while the streams
open (each gets its job's snapshot first) over ``channels`` gRPC channels, each its own
HTTP/2 connection (``grpc.use_local_subchannel_pool``: without it gRPC shares one
connection among all channels to the same address with the same options). Stream ``i``
watches job ``i % jobs`` on channel ``(i // jobs) % channels``, so a connection carries a
stream of every job rather than all the watchers of a few.

Streams open at most :data:`OPEN_AT_ONCE` at a time (a stream counts until its first
update). All at once, the RPCs the server has not yet taken up pile up in gRPC core, and
above 1,000 of them (``grpc.server.max_pending_requests``; every one beyond 3,000,
``..._hard_limit``) core refuses new ones at random: the client sees CANCELLED and the
handler never runs. The bench's gate keeps the opening under that backlog: what is
measured is the streams, not a burst of connects. The server takes up one new call per turn
of its event loop, so a loop kept busy leaves even a few hundred calls waiting, and core
cancels those still waiting after 30 s (``grpc.server_max_unrequested_time_in_server``):
also CANCELLED before the handler ran (``rpc CANCELLED (not opened)``; the first errors
say how long each had waited).

With every stream open and quiet, the jobs process's RSS is read (``watchers_10k_rss_mb``:
the RSS itself, as ``sse_streams_1k_rss_mb`` is the web process's; the growth is in the
details), after :data:`QUIET_S` (more than a resync period: the fan-out reads quiet jobs
again every ``services.jobs.fanout.RESYNC_S``) whose CPU is recorded too. Then the workers
start (providers at 300 ms a call, :data:`WORKER_ENV`: reports spread over the run), and
every update is timed from the worker's report (``report_published_at``) to its arrival at
the bench, as :class:`bench.load.Tracker` does for the progress figure: the p99 over all
streams is ``watchers_10k_update_p99_ms``. Every stream is read to its end, and how it
ended is counted: on its job's terminal snapshot (by the job's status), on a gRPC error (by
its code), ended OK without the terminal snapshot, or still open when the bench stopped
waiting; ``watchers_10k_incomplete`` is every stream that did not end on the terminal
snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from bench.config import SLOW_WORKER_ENV, log
from bench.harness import Harness
from bench.load import TERMINAL, Observed, Tracker, campaign, frozen_heap, stamp_of
from bench.procstat import rss_mb
from bench.stats import kb_each
from prospect.v1 import jobs_pb2, jobs_pb2_grpc

STREAMS = 10_000  # the key is watchers_10k_*: the count is not a knob
JOBS = 100
CHANNELS = 100  # 100 streams on each connection
# Workers of this scenario: 300 ms a call; 25 discoveries at once (the 100 campaigns start
# in four rounds, not all in the same second) and the default 16 enrichment tasks.
WORKER_ENV = {
    **SLOW_WORKER_ENV,
    "DISCOVERY_CONCURRENCY": "25",
    "ENRICHMENT_CONCURRENCY": "16",
}
# A campaign's leads and how long the bench waits for the streams to end once the workers
# started (full run, BENCH_QUICK): every lead is a few more updates to each of 100 streams.
LEADS, QUICK_LEADS = 3, 2
LIMIT_S, QUICK_LIMIT_S = 60.0, 40.0
OPEN_AT_ONCE = 256  # streams waiting for their first update at once (see the module doc)
OPEN_ALL_TIMEOUT_S = 90.0
QUIET_S = 2.5  # all open, before the RSS is read: a resync period and a half
# Each channel its own TCP connection (see the module's doc).
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
# Endings that are not a terminal snapshot.
NOT_OPENED = "not opened"  # cancelled by the bench before its first update
ENDED_EARLY = "ended early"  # the stream ended OK before the job did
STILL_OPEN = "still open"  # still open when the bench stopped waiting
MAX_ERRORS = 5


def _status_name(status: int) -> str:
    return jobs_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")


_TERMINAL_NAMES = frozenset(_status_name(status) for status in TERMINAL)


@dataclass
class WatchersResult:
    streams: int
    jobs: int
    channels: int
    leads: int  # a campaign's max_results
    opened: int = 0  # streams that had their first update
    open_s: float = 0.0  # from the first stream asked for to the last first update
    idle_rss_mb: float = 0.0  # the jobs process before the streams
    rss_mb: float = 0.0  # with them all open, quiet
    peak_rss_mb: float = 0.0  # the jobs process's peak, updates flowing included
    run_s: float = 0.0  # from the workers started to the last stream ended
    latencies_ms: list[float] = field(default_factory=list)  # report -> update at the bench
    updates: int = 0  # updates received, first ones included
    # (job index, report stamp in ns) of every stamped update a stream received: the moments
    # the snapshots' reports were published, which bench/grpc_only.py replays.
    moments: set[tuple[int, int]] = field(default_factory=set)
    endings: Counter[str] = field(default_factory=Counter)  # how each stream ended
    open_cpu: dict[str, float] = field(default_factory=dict)  # cores busy while opening
    quiet_cpu: dict[str, float] = field(default_factory=dict)  # all open, no update
    run_cpu: dict[str, float] = field(default_factory=dict)  # while the campaigns ran
    others_cores: float = math.nan  # the machine's other programs, while they ran
    errors: list[str] = field(default_factory=list)  # the first few

    @property
    def terminal(self) -> int:
        """Streams that ended on their job's terminal snapshot."""
        return sum(n for ending, n in self.endings.items() if ending in _TERMINAL_NAMES)

    @property
    def incomplete(self) -> int:
        return self.streams - self.terminal

    @property
    def kb_per_stream(self) -> float:
        return kb_each(self.idle_rss_mb, self.rss_mb, self.opened)

    def endings_line(self) -> str:
        return ", ".join(f"{ending} {n}" for ending, n in self.endings.most_common()) or "-"


async def run_watchers(
    harness: Harness,
    start_workers: Callable[[], Awaitable[None]],
    *,
    leads: int,
    limit_s: float,
    streams: int = STREAMS,
    jobs: int = JOBS,
    channels: int = CHANNELS,
) -> tuple[WatchersResult, list[str]]:
    """Submit ``jobs`` campaigns of ``leads`` leads (no worker must be running), open
    ``streams`` streams over them, read the jobs RSS, call ``start_workers``, follow every
    stream to its end (at most ``limit_s`` after the workers started). Returns the result
    and the jobs submitted (for the caller to cancel those still running)."""
    result = WatchersResult(streams=streams, jobs=jobs, channels=channels, leads=leads)
    stub = jobs_pb2_grpc.JobServiceStub(harness.channel)
    job_ids = []
    for n in range(jobs):
        request = jobs_pb2.SubmitCampaignRequest(config=campaign(20_000 + n, max_results=leads))
        job_ids.append((await stub.SubmitCampaign(request, timeout=30)).job_id)
    jobs_pid = harness.pid("jobs")
    sampler = harness.sampler(["jobs"])
    result.idle_rss_mb = rss_mb(jobs_pid)
    pool = [
        grpc.aio.insecure_channel(harness.jobs_addr, options=CHANNEL_OPTIONS)
        for _ in range(channels)
    ]
    stubs = [jobs_pb2_grpc.JobServiceStub(channel) for channel in pool]
    seen = Observed()
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    opened_all = asyncio.Event()
    settled = 0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == streams:
            opened_all.set()

    async def watch(i: int) -> None:
        job_id = job_ids[i % jobs]
        tracker = Tracker(job_id, seen)
        ending = NOT_OPENED
        waiting = opened = False  # waiting: holding the gate, for the first update
        try:
            await gate.acquire()
            waiting, asked = True, time.monotonic()
            call = stubs[(i // jobs) % channels].WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id))
            try:
                async for update in call:
                    now_ns, now = time.time_ns(), time.monotonic()
                    result.updates += 1
                    if waiting:
                        waiting, opened, ending = False, True, ENDED_EARLY
                        gate.release()
                        result.opened += 1
                        settle()
                    stamp_ns = stamp_of(update)
                    if stamp_ns:
                        result.moments.add((i % jobs, stamp_ns))
                    job = tracker.update(update, now, now_ns, stamp_ns)
                    if job is not None:
                        ending = _status_name(job.status)  # read on: the stream ends OK
            except grpc.aio.AioRpcError as exc:
                if len(result.errors) < MAX_ERRORS:
                    code, details = exc.code().name, exc.details()
                    after = time.monotonic() - asked
                    result.errors.append(
                        f"stream {i} ({job_id}, {ending}, {after:.1f}s in): {code}: {details}"
                    )
                if ending in (NOT_OPENED, ENDED_EARLY):
                    ending = f"rpc {exc.code().name}{'' if opened else ' (not opened)'}"
            finally:
                call.cancel()  # a no-op once ended
        except asyncio.CancelledError:
            if ending == ENDED_EARLY:
                ending = STILL_OPEN
            raise
        finally:
            result.endings[ending] += 1
            if waiting:
                gate.release()
            if not opened:
                settle()

    sampler.start()
    started = time.monotonic()
    tasks = [asyncio.create_task(watch(i)) for i in range(streams)]
    try:
        try:
            await asyncio.wait_for(opened_all.wait(), OPEN_ALL_TIMEOUT_S)
        except TimeoutError:
            log(f"watchers: {streams - settled} streams without a first update")
        opened_at = time.monotonic()
        result.open_s = opened_at - started
        await asyncio.sleep(QUIET_S)
        result.rss_mb = rss_mb(jobs_pid)
        quiet_end = time.monotonic()
        log(
            f"watchers: {result.opened} of {streams} open in {result.open_s:.1f}s, jobs RSS "
            f"{result.idle_rss_mb:.1f} -> {result.rss_mb:.1f} MB; starting the workers"
        )
        with frozen_heap():  # the streams' objects, no longer walked by the collector
            await start_workers()
            running = time.monotonic()
            _, pending = await asyncio.wait(tasks, timeout=limit_s)
            ended = time.monotonic()
        result.run_s = ended - running
        if pending:
            log(f"watchers: {len(pending)} streams still open after {limit_s:.0f}s")
        await sampler.stop()
        result.open_cpu = sampler.cpu_share(started, opened_at)
        result.quiet_cpu = sampler.cpu_share(opened_at, quiet_end)
        result.run_cpu = sampler.cpu_share(running, ended)
        result.others_cores = sampler.others_share(running, ended)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sampler.stop()
        for channel in pool:
            with contextlib.suppress(Exception):
                await channel.close()
    result.peak_rss_mb = sampler.peak_mb["jobs"]
    result.latencies_ms = [ms for _, ms in seen.progress_ms]
    return result, job_ids
