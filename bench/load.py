"""Campaigns through the public API: a closed loop keeping N campaigns in flight, each
submitted with SubmitCampaign and followed with WatchJob until it ends, recording when
campaigns complete, when leads are enriched, and each update's report-to-watcher latency."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from bench.config import log
from prospect.v1 import jobs_pb2, jobs_pb2_grpc

TERMINAL = frozenset(
    {jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED}
)
_TYPES = ("coffee shop", "bakery", "dentist", "plumber", "florist", "hair salon")
MAX_ERRORS = 20


def campaign(n: int, max_results: int, *, vary: bool = True) -> jobs_pb2.CampaignConfig:
    """Campaign ``n``, every place kept (min score 0). With ``vary``, a business type and a
    town of its own (so campaigns look up different domains, as real ones would); without,
    the same market each time, so every campaign is the same work."""
    return jobs_pb2.CampaignConfig(
        business_type=_TYPES[n % len(_TYPES)] if vary else _TYPES[0],
        location=f"Springfield {n}" if vary else "Springfield",
        max_results=max_results,
        min_confidence_score=0,
        verify_emails=True,
    )


@dataclass
class Observed:
    """What watchers saw; times are ``time.monotonic()`` at receipt."""

    completions: list[tuple[float, float]] = field(default_factory=list)  # (t, 1)
    leads_done: list[tuple[float, float]] = field(default_factory=list)  # (t, leads of it)
    lead_events: list[tuple[float, float]] = field(default_factory=list)  # (t, newly enriched)
    progress_ms: list[tuple[float, float]] = field(default_factory=list)  # (t, latency)
    walls: list[float] = field(default_factory=list)  # submit -> terminal, completed ones
    not_completed: int = 0
    errors: int = 0
    # When the load stopped, how long each campaign still running had run (seconds).
    running_at_stop: list[float] = field(default_factory=list)

    def latencies(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [ms for t, ms in self.progress_ms if start < t <= end]

    def nth_completion(self, n: int) -> float | None:
        """When the ``n``-th campaign (1-based) completed; None if fewer did."""
        times = sorted(t for t, _ in self.completions)
        return times[n - 1] if 0 < n <= len(times) else None


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """This process's objects, set aside from its collector while inside. A bench process
    holding 10,000 streams stands for watchers on many machines: its own full collections
    walking every stream's objects paused it for up to 0.6 s while updates came, and that
    counted as the server's latency. Afterwards they are collected as usual again."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def stamp_of(update: jobs_pb2.JobUpdate) -> int:
    """The update's ``report_published_at`` in nanoseconds; 0 when it has none."""
    stamp = update.report_published_at
    return stamp.ToNanoseconds() if stamp.seconds or stamp.nanos else 0


class Tracker:
    """What one watcher of ``job_id`` records into ``seen``, whatever the transport: the
    report-to-watcher latency of stamped updates, leads newly enriched, the ending."""

    def __init__(self, job_id: str, seen: Observed) -> None:
        self.job_id = job_id
        self.seen = seen
        self.enriched = 0

    def update(
        self, update: jobs_pb2.JobUpdate, now: float, now_ns: int, stamp_ns: int | None = None
    ) -> jobs_pb2.Job | None:
        """Record ``update``, received at ``now`` (``time.monotonic()``) and ``now_ns``
        (``time.time_ns()``); its stamp is ``stamp_ns`` when given (already parsed), else
        its ``report_published_at``. Returns the job when it is terminal."""
        seen = self.seen
        if stamp_ns is None:
            stamp_ns = stamp_of(update)
        if stamp_ns:
            seen.progress_ms.append((now, (now_ns - stamp_ns) / 1e6))
        job = update.job
        if job.metrics.leads_enriched > self.enriched:
            seen.lead_events.append((now, job.metrics.leads_enriched - self.enriched))
            self.enriched = job.metrics.leads_enriched
        if job.status not in TERMINAL:
            return None
        if job.status == jobs_pb2.JOB_STATUS_COMPLETED:
            seen.completions.append((now, 1.0))
            seen.leads_done.append((now, float(job.metrics.leads_enriched)))
        else:
            seen.not_completed += 1
            if seen.not_completed <= 3:
                name = jobs_pb2.JobStatus.Name(job.status)
                log(f"job {self.job_id} ended {name}: {job.error}")
        return job


# Follows a job to its end, recording into the Observed; returns the terminal job.
Follow = Callable[[str, Observed], Awaitable[jobs_pb2.Job]]


async def follow(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, seen: Observed, limit_s: float = 300.0
) -> jobs_pb2.Job:
    """Watch ``job_id`` to its end, recording into ``seen``; returns the terminal job."""
    tracker = Tracker(job_id, seen)
    request = jobs_pb2.WatchJobRequest(job_id=job_id)
    async for update in stub.WatchJob(request, timeout=limit_s):
        job = tracker.update(update, time.monotonic(), time.time_ns())
        if job is not None:
            return job
    raise RuntimeError(f"watch of {job_id} ended before the job did")


async def cancel_jobs(
    stub: jobs_pb2_grpc.JobServiceStub, job_ids: Iterable[str], concurrency: int = 8
) -> None:
    """CancelJob each job (those already finished are left as they are)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job_id: str) -> None:
        async with gate:
            try:
                await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=30)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise

    await asyncio.gather(*(one(j) for j in job_ids))


class CampaignLoad:
    """Keeps ``inflight`` campaigns running: as one ends, the next is submitted. Each is
    followed with ``follow_job`` (by default :func:`follow`, a WatchJob stream on
    ``channel``); its errors that count as a campaign's are gRPC ones and RuntimeError."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        inflight: int,
        make_config: Callable[[int], jobs_pb2.CampaignConfig],
        follow_job: Follow | None = None,
    ) -> None:
        self.stub = jobs_pb2_grpc.JobServiceStub(channel)
        self.follow_job = follow_job or (lambda job_id, seen: follow(self.stub, job_id, seen))
        self.inflight = inflight
        self.make_config = make_config
        self.seen = Observed()
        self.running: dict[str, float] = {}  # job ids submitted, not seen ending -> when
        self.started_at = 0.0
        self._numbers = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._slot()) for _ in range(self.inflight)]

    async def _slot(self) -> None:
        while True:
            config = self.make_config(next(self._numbers))
            started = time.monotonic()
            try:
                request = jobs_pb2.SubmitCampaignRequest(config=config)
                job_id = (await self.stub.SubmitCampaign(request, timeout=30)).job_id
                self.running[job_id] = started
                job = await self.follow_job(job_id, self.seen)
                self.running.pop(job_id, None)
                if job.status == jobs_pb2.JOB_STATUS_COMPLETED:
                    self.seen.walls.append(time.monotonic() - started)
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                self.seen.errors += 1
                log(f"campaign error: {exc}")
                if self.seen.errors > MAX_ERRORS:
                    raise
                await asyncio.sleep(0.2)

    def check(self) -> None:
        """Raise the error of a slot that gave up (too many errors)."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError("campaign load failed") from task.exception()

    async def run_for(self, seconds: float) -> None:
        """Let the load run ``seconds`` more, failing early if it broke."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.25, left))
            self.check()

    async def stop(self) -> float:
        """Stop submitting and watching, cancel the campaigns still running; returns when
        the load stopped (``time.monotonic()``)."""
        stopped = time.monotonic()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.seen.running_at_stop = [stopped - at for at in self.running.values()]
        await cancel_jobs(self.stub, sorted(self.running))
        self.running.clear()
        return stopped
