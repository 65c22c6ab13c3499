"""Stacks on the fake providers, and what the end-to-end tests drive them with: campaigns,
submits and reads that ride out restarts, watchers that resume, frozen fakes, and the
checks every finished job must pass (its leads stored once, its cost equal to what the
fakes billed for it). Every stack a helper starts, it stops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import is_terminal, job_service, list_all_leads, watch_until_done
from services.cli.stack import ServiceProcess, Stack, wait_all_ready
from tests.fakes import FakeProviders

COMPLETED = jobs_pb2.JOB_STATUS_COMPLETED
ENRICHING = jobs_pb2.STAGE_ENRICHING

SHUTDOWN_GRACE_S = 5.0
ACK_WAIT_S = 2.0
QUIET_S = 0.5  # no request for this long: every task is blocked at a fake or before its intent
BASE_ENV = {
    "ACK_WAIT_S": str(ACK_WAIT_S),
    "MAX_DELIVER": "10",
    "PROVIDER_MAX_ATTEMPTS": "3",
    "SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
    "MAX_ACTIVE_JOBS_PER_USER": "100",
    "MAX_WATCHES_PER_USER": "100",
    **{
        f"RATE_LIMIT_{name}_{kind}": value
        for name in ("GOOGLE_PLACES", "HUNTER", "NEVERBOUNCE")
        for kind, value in (("RPS", "50"), ("BURST", "10"))
    },
}

JobPredicate = Callable[[jobs_pb2.Job], bool]


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


def campaign(location: str, max_results: int = 6) -> jobs_pb2.CampaignConfig:
    return jobs_pb2.CampaignConfig(
        business_type="bakery", location=location, max_results=max_results,
        min_confidence_score=0, verify_emails=True,
    )  # fmt: skip


def query_of(config: jobs_pb2.CampaignConfig) -> str:
    """The text query the Google adapter sends: the fakes bill each job under it."""
    return f"{config.business_type} in {config.location}"


def describe(job: jobs_pb2.Job) -> str:
    m = job.metrics
    return (
        f"{job.id} {jobs_pb2.JobStatus.Name(job.status)}/{jobs_pb2.Stage.Name(job.stage)} "
        f"v{job.version} attempts={job.attempts} leads={m.leads_enriched}/{m.qualified_leads} "
        f"cost={job.metrics.total_cost:.6f} error={job.error!r}"
    )


@contextlib.contextmanager
def running_stack(
    data_dir: Path,
    fakes: FakeProviders,
    env: Mapping[str, str] | None = None,
    *,
    enrichment_workers: int = 1,
    metrics: bool = False,
) -> Iterator[Stack]:
    """A stack on the fakes; its log tails are printed when the body fails, and every
    process is stopped (the fakes released first) whatever happens. ``metrics``: each
    process serves Prometheus metrics (``stack.metrics_urls()``)."""
    env = {**fakes.env(), **BASE_ENV, **(env or {})}
    stack = Stack(data_dir, env=env, metrics=metrics)
    try:
        stack.start()
        extra = [stack.add_service("enrichment", label=f"enrichment-{n}")
                 for n in range(2, enrichment_workers + 1)]  # fmt: skip
        wait_all_ready(extra)
        yield stack
    except BaseException:
        print(f"\n===== logs of the stack in {data_dir} =====\n{stack.log_tails(80)}")
        raise
    finally:
        fakes.release()
        stack.stop()


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def submit(stub: jobs_pb2_grpc.JobServiceStub, config: jobs_pb2.CampaignConfig) -> str:
    response = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config), timeout=10)
    return str(response.job_id)


async def get_job(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> jobs_pb2.Job:
    # wait_for_ready: right after a restart of the jobs service the channel may still be in
    # its reconnect backoff, where a call would fail at once instead of waiting for it.
    request = jobs_pb2.GetJobRequest(job_id=job_id)
    return await stub.GetJob(request, timeout=10, wait_for_ready=True)


async def wait_all_terminal(
    stub: jobs_pb2_grpc.JobServiceStub, job_ids: list[str], within: float
) -> dict[str, jobs_pb2.Job]:
    """Poll GetJob until every job is terminal; fail naming those that are not."""
    deadline = time.monotonic() + within
    jobs: dict[str, jobs_pb2.Job] = {}
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):  # a jobs service restarting
            for job_id in job_ids:
                if job_id not in jobs or not is_terminal(jobs[job_id].status):
                    jobs[job_id] = await get_job(stub, job_id)
        if len(jobs) == len(job_ids) and all(is_terminal(j.status) for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            stuck = [describe(j) for j in jobs.values() if not is_terminal(j.status)]
            pytest.fail(f"{len(stuck)} job(s) unfinished after {within:.0f}s:\n" + "\n".join(stuck))
        await asyncio.sleep(0.25)


async def watch_for(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, predicate: JobPredicate, within: float
) -> jobs_pb2.Job:
    """Watch ``job_id`` until an update satisfies ``predicate``."""
    call = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id))
    try:
        async with asyncio.timeout(within):
            async for update in call:
                if predicate(update.job):
                    return update.job
                assert not is_terminal(update.job.status), describe(update.job)
    except TimeoutError:
        pass
    finally:
        call.cancel()
    pytest.fail(f"job {job_id} never got there in {within:.0f}s")


@dataclass
class Watcher:
    """A resuming watch of one job on its own channel, recording what it sees."""

    job_id: str
    versions: list[int] = field(default_factory=list)
    resumes: list[str] = field(default_factory=list)
    final: jobs_pb2.Job | None = None

    async def run(self, addr: str) -> None:
        def on_update(update: jobs_pb2.JobUpdate) -> None:
            self.versions.append(update.job.version)

        async with job_service(addr) as stub:
            self.final = await watch_until_done(
                stub, self.job_id, on_update, on_retry=lambda why, _: self.resumes.append(why)
            )

    def problem(self, job: jobs_pb2.Job) -> str:
        """What is wrong with the watch of ``job``, as it stands now ("" when all is well):
        its end must be the job's terminal snapshot, its versions strictly increasing."""
        if self.final is None or not is_terminal(self.final.status):
            return "no terminal snapshot"
        if (self.final.version, self.final.status) != (job.version, job.status):
            return f"ended on v{self.final.version}, the job is {describe(job)}"
        if not self.versions or self.versions[-1] != job.version:
            return f"saw versions {self.versions}"
        if any(a >= b for a, b in zip(self.versions, self.versions[1:], strict=False)):
            return f"versions not strictly increasing: {self.versions}"
        return ""


@contextlib.asynccontextmanager
async def watching(watchers: list[Watcher], addr: str) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run every watcher as a task; whatever is still running on the way out is cancelled."""
    tasks = [asyncio.create_task(w.run(addr)) for w in watchers]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def restart_killed(*procs: ServiceProcess) -> None:
    for proc in procs:
        proc.start()
    await asyncio.to_thread(wait_all_ready, procs, 60.0)


@contextlib.asynccontextmanager
async def frozen(fakes: FakeProviders) -> AsyncIterator[None]:
    """Hold the fakes' answers until the traffic stops; release them on the way out."""
    fakes.hold()
    try:
        quiet = await asyncio.to_thread(fakes.wait_quiet, QUIET_S, 30.0)
        assert quiet, "requests kept reaching the fakes while they were held"
        yield
    finally:
        fakes.release()


async def job_problems(
    stub: jobs_pb2_grpc.JobServiceStub, fakes: FakeProviders, job: jobs_pb2.Job, query: str
) -> list[str]:
    """What is wrong with ``job``: not COMPLETED, a lead stored twice or missing, a cost that
    is not what the providers billed for ``query`` (per provider, to the micro-dollar)."""
    if job.status != COMPLETED:
        return [describe(job)]
    problems = []
    leads = await list_all_leads(stub, job.id)
    place_ids = [lead.place_id for lead in leads]
    if len(place_ids) != len(set(place_ids)):
        problems.append(f"duplicate leads: {sorted(place_ids)}")
    if not len(leads) == job.metrics.qualified_leads == job.metrics.leads_enriched:
        problems.append(f"{len(leads)} leads stored")
    for fake in fakes.fakes:
        billed = micros(fake.bill_for(query))
        charged = micros(job.metrics.cost_by_provider.get(fake.name, 0.0))
        if billed != charged:
            calls = len(fake.requests_for(query))
            problems.append(f"{fake.name} billed {billed}, charged {charged} ({calls} calls)")
    if micros(job.metrics.total_cost) != micros(fakes.bill_for(query)):
        problems.append(f"billed {fakes.bill_for(query)} in all")
    if micros(sum(lead.cost for lead in leads)) != micros(job.metrics.total_cost):
        problems.append(f"lead costs add up to {sum(lead.cost for lead in leads)}")
    return [f"{describe(job)}: {p}" for p in problems]


async def check_job(
    stub: jobs_pb2_grpc.JobServiceStub, fakes: FakeProviders, job: jobs_pb2.Job, query: str
) -> None:
    problems = await job_problems(stub, fakes, job, query)
    assert not problems, "\n".join(problems)


def requests_seen(fakes: FakeProviders) -> int:
    return sum(len(fake.requests) for fake in fakes.fakes)
