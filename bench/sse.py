"""The web process's Server-Sent Events (``GET /v1/jobs/{job_id}/events``), read as a
browser's ``EventSource`` would: over HTTP/1.1, one connection per stream, ``data:`` lines
holding the JSON of a JobUpdate (protobuf's JSON mapping: ``reportPublishedAt`` an RFC 3339
string).

- **SSE progress** (:func:`sse_follow`, given to :func:`bench.progress.run_progress`): in
  the progress scenario, every other campaign is followed over its event stream instead
  of WatchJob. The latency is from the worker's report (its ``time.time_ns()``) to the
  event's arrival at the bench (same clock), taken before the JSON is parsed.
- **1,000 streams** (:func:`run_sse_streams`): with no worker running, a few campaigns stay
  queued and their streams quiet after the first event (the job's snapshot). 1,000 streams
  are opened over them (a gRPC WatchJob stream each, in the web process), and the web
  process's RSS is read once every stream has had its first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import aiohttp
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from bench.config import log
from bench.load import Follow, Observed, Tracker, campaign
from bench.procstat import Sampler, rss_mb
from bench.stats import kb_each
from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import WEB

OPEN_AT_ONCE = 64  # streams being opened at once (under aiohttp's listen backlog of 128)
FIRST_EVENT_TIMEOUT_S = 30.0
OPEN_ALL_TIMEOUT_S = 60.0
SETTLE_S = 1.0  # after the last first event, before RSS is read


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards the hard one (children
    started afterwards inherit it), to at least ``wanted`` if allowed; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log(f"sse: open files limited to {soft} (ulimit -n), under the {wanted} wanted")
    return soft


def client_session() -> aiohttp.ClientSession:
    """A session without a connection limit (one connection per open event stream)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
    )


def events_url(web_url: str, job_id: str) -> str:
    return f"{web_url}/v1/jobs/{job_id}/events"


async def events(content: aiohttp.StreamReader) -> AsyncGenerator[tuple[str, str], None]:
    """The ``(event type, data)`` of each event of a ``text/event-stream`` body (the parts
    of the format the web process uses: ``event:``, ``data:`` lines, comments)."""
    kind, data = "message", list[str]()
    async for raw in content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: the heartbeat
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value


async def _check_status(response: aiohttp.ClientResponse, job_id: str) -> None:
    if response.status != 200:
        body = (await response.text())[:300]
        raise RuntimeError(f"event stream of {job_id}: HTTP {response.status}: {body}")


def stamp_ns(body: dict[str, object]) -> int:
    """``reportPublishedAt`` of an update's JSON in nanoseconds; 0 when absent."""
    value = body.get("reportPublishedAt")
    if not isinstance(value, str):
        return 0
    stamp = Timestamp()
    stamp.FromJsonString(value)
    return stamp.ToNanoseconds()


def sse_follow(session: aiohttp.ClientSession, web_url: str, limit_s: float = 300.0) -> Follow:
    """A :data:`bench.load.Follow` reading the job's event stream from the web process."""

    async def follow_job(job_id: str, seen: Observed) -> jobs_pb2.Job:
        tracker = Tracker(job_id, seen)
        try:
            async with asyncio.timeout(limit_s):
                async with session.get(events_url(web_url, job_id)) as response:
                    await _check_status(response, job_id)
                    async for kind, data in events(response.content):
                        now_ns, now = time.time_ns(), time.monotonic()
                        if kind == "error":
                            raise RuntimeError(f"event stream of {job_id}: error {data}")
                        if kind != "update":
                            continue
                        body = json.loads(data)
                        update = json_format.ParseDict(
                            body, jobs_pb2.JobUpdate(), ignore_unknown_fields=True
                        )
                        job = tracker.update(update, now, now_ns, stamp_ns(body))
                        if job is not None:
                            return job
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RuntimeError(f"event stream of {job_id}: {exc!r}") from exc
        raise RuntimeError(f"event stream of {job_id} ended before the job did")

    return follow_job


@dataclass
class SseStreamsResult:
    requested: int
    jobs: int
    opened: int = 0  # streams that had their first event and were open when RSS was read
    failed: int = 0
    dropped: int = 0  # had their first event, then ended before being closed by the bench
    open_s: float = 0.0  # from the first stream asked for to the last first event
    idle_rss_mb: float = 0.0  # the web process before the streams
    rss_mb: float = 0.0  # with them open
    peak_rss_mb: float = 0.0
    jobs_peak_rss_mb: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)  # per process, while opening
    errors: list[str] = field(default_factory=list)  # the first few

    @property
    def kb_per_stream(self) -> float:
        return kb_each(self.idle_rss_mb, self.rss_mb, self.opened)


async def run_sse_streams(
    stub: jobs_pb2_grpc.JobServiceStub,
    session: aiohttp.ClientSession,
    web_url: str,
    sampler: Sampler,
    streams: int,
    jobs: int,
) -> tuple[SseStreamsResult, list[str]]:
    """Open ``streams`` event streams spread over ``jobs`` new campaigns (no worker must be
    running: they stay queued), read the web process's RSS with all open, close them.
    ``sampler`` samples the web process (``web``) and the jobs service (``jobs``), perhaps
    others. Returns the result and the jobs submitted (for the caller to cancel)."""
    web_pid = sampler.pids[WEB]
    result = SseStreamsResult(requested=streams, jobs=jobs)
    job_ids = []
    for n in range(jobs):
        request = jobs_pb2.SubmitCampaignRequest(config=campaign(10_000 + n, max_results=10))
        job_ids.append((await stub.SubmitCampaign(request, timeout=30)).job_id)
    result.idle_rss_mb = rss_mb(web_pid)
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    release = asyncio.Event()
    all_settled = asyncio.Event()
    settled = 0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == streams:
            all_settled.set()

    def failure(i: int, exc: BaseException) -> None:
        if len(result.errors) < 3:
            result.errors.append(f"stream {i}: {exc!r}")

    async def hold(i: int) -> None:
        job_id = job_ids[i % jobs]
        first = False
        await gate.acquire()
        try:
            async with session.get(events_url(web_url, job_id)) as response:
                await _check_status(response, job_id)
                stream = events(response.content)
                try:
                    item = await asyncio.wait_for(anext(stream, None), FIRST_EVENT_TIMEOUT_S)
                    if item is None or item[0] != "update":
                        raise RuntimeError(f"no update as first event: {item}")
                    first = True
                    result.opened += 1
                    gate.release()
                    settle()
                    await release.wait()
                finally:
                    await stream.aclose()
                    response.close()
        except (aiohttp.ClientError, RuntimeError, TimeoutError, OSError) as e:
            failure(i, e)
            if first:
                result.dropped += 1
                result.opened -= 1
            else:
                result.failed += 1
                gate.release()
                settle()

    sampler.start()
    started = time.monotonic()
    tasks = [asyncio.create_task(hold(i)) for i in range(streams)]
    try:
        try:
            await asyncio.wait_for(all_settled.wait(), OPEN_ALL_TIMEOUT_S)
        except TimeoutError:
            log(f"sse streams: {streams - settled} not settled after {OPEN_ALL_TIMEOUT_S:.0f}s")
        opened_at = time.monotonic()
        result.open_s = opened_at - started
        await asyncio.sleep(SETTLE_S)
        result.rss_mb = rss_mb(web_pid)
        await sampler.stop()
        result.peak_rss_mb = sampler.peak_mb[WEB]
        result.jobs_peak_rss_mb = sampler.peak_mb.get("jobs", 0.0)
        result.cpu_cores = sampler.cpu_share(started, opened_at)
        opened = result.opened  # open now; those dropped later do not change the reading
    finally:
        release.set()
        for task in tasks:
            if not task.done() and not all_settled.is_set():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sampler.stop()
    result.opened = opened
    return result, job_ids
