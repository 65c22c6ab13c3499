"""Fault injection over real processes: campaigns against the fake providers survive
``kill -9`` of every service, a nats-server restart, cancellation and SIGTERM, with every
lead stored once and every job's cost equal to what the providers billed for it (issue 4).

Workers are killed only while the fakes hold their answers and no request has arrived for a
moment: every task is then blocked inside a request the provider has billed (its intent
stands at the list price the fake billed) or has not yet published an intent, so the bill
stays exact. With ``every_domain_has_emails`` every Hunter search costs its list price.
"""

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

pytestmark = pytest.mark.e2e

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
) -> Iterator[Stack]:
    """A stack on the fakes; its log tails are printed when the body fails, and every
    process is stopped (the fakes released first) whatever happens."""
    stack = Stack(data_dir, env={**fakes.env(), **BASE_ENV, **(env or {})})
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


async def inject_faults(
    stack: Stack, fakes: FakeProviders, stub: jobs_pb2_grpc.JobServiceStub, job_ids: list[str]
) -> list[int]:
    """kill -9 and restart the discovery worker and one enrichment worker, then the jobs
    service; restart nats-server. Returns how many jobs were unfinished at each fault."""
    procs = stack.processes
    unfinished: list[int] = []

    async def count_unfinished() -> None:
        jobs = [await get_job(stub, job_id) for job_id in job_ids]
        unfinished.append(sum(not is_terminal(j.status) for j in jobs))

    async def more_calls(n: int = 15) -> None:
        """Until ``n`` more provider calls, or none for a while (all done, or stalled)."""
        mark = requests_seen(fakes) + n
        idle = lambda: time.monotonic() - max(f.last_request_at() for f in fakes.fakes) > 3  # noqa: E731
        await until(lambda: requests_seen(fakes) >= mark or idle(), 120, f"{n} more calls")

    # 1. The workers, while every task is blocked at a fake or before its intent.
    await until(lambda: len(fakes.hunter.requests) >= 5, 120, "enrichment to start")
    async with frozen(fakes):
        await count_unfinished()
        print(f"killing workers with {fakes.held_count()} request(s) held")
        procs["discovery"].kill()
        procs["enrichment-2"].kill()
    await restart_killed(procs["discovery"], procs["enrichment-2"])

    # 2. The jobs service, restarted on the same address (the process keeps its env).
    await more_calls()
    await count_unfinished()
    procs["jobs"].kill()
    await restart_killed(procs["jobs"])

    # 3. nats-server; the fakes answer again once every service has reconnected.
    await more_calls()
    async with frozen(fakes):
        await count_unfinished()
        offsets = {label: len(p.read_log()) for label, p in procs.items()}
        await asyncio.to_thread(stack.nats.restart)
        await until(
            lambda: all(b"reconnected" in p.read_log(offsets[k]) for k, p in procs.items()),
            30,
            "every service to reconnect to NATS",
        )
    return unfinished


@pytest.mark.timeout(600)
async def test_thirty_campaigns_survive_crashes_and_restarts(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=25, every_domain_has_emails=True, latency_s=0.05)
    env = {"DISCOVERY_CONCURRENCY": "2", "ENRICHMENT_CONCURRENCY": "2"}
    with fakes, running_stack(tmp_path, fakes, env, enrichment_workers=2) as stack:
        configs = [campaign(f"Faultville {n}", max_results=6 + n % 3) for n in range(30)]
        async with job_service(stack.jobs_addr) as stub:
            job_ids = [await submit(stub, config) for config in configs]
            watchers = [Watcher(job_id) for job_id in job_ids]
            async with watching(watchers, stack.jobs_addr) as tasks:
                unfinished = await inject_faults(stack, fakes, stub, job_ids)
                print(f"unfinished jobs at each fault: {unfinished}")
                ended = await wait_all_terminal(stub, job_ids, within=300)
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
            # A report redelivered after the ack wait would land now: a final job must not
            # change any more, so the state read later is the state it ended in.
            await asyncio.sleep(2 * ACK_WAIT_S)
            problems = []
            for config, job_id, watcher in zip(configs, job_ids, watchers, strict=True):
                job = await get_job(stub, job_id)
                if (job.version, job.metrics.total_cost) != (
                    ended[job_id].version,
                    ended[job_id].metrics.total_cost,
                ):
                    problems.append(f"changed after it ended: {describe(ended[job_id])}")
                problems += await job_problems(stub, fakes, job, query_of(config))
                if watcher.problem(job):
                    problems.append(f"{job_id} watcher: {watcher.problem(job)}")
            assert not problems, "\n".join(problems)
        assert any(w.resumes for w in watchers), "no watcher had to resume"


async def test_max_attempts_exhausted_fails_with_a_clear_error(tmp_path: Path) -> None:
    env = {"JOB_MAX_ATTEMPTS": "2", "MAX_DELIVER": "2", "PROVIDER_MAX_ATTEMPTS": "2"}
    with (
        FakeProviders(places_per_query=10) as fakes,
        running_stack(tmp_path, fakes, env) as stack,
    ):
        fakes.google.fail_next(1000, "server_error")
        config = campaign("Failburg")
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, config)
            job = await asyncio.wait_for(watch_until_done(stub, job_id, lambda _: None), 150)
        assert job.status == jobs_pb2.JOB_STATUS_FAILED, describe(job)
        error = job.error.lower()
        assert "discovering" in error and "google_places" in error, job.error
        assert "2 attempt" in error, job.error
        assert job.attempts == 2
        # Every try really reached Google, each answered 503; none was billed or charged.
        calls = len(fakes.google.requests_for(query_of(config)))
        assert 2 <= calls <= 2 * 2 * 2, calls  # job attempts x deliveries x provider tries
        assert micros(job.metrics.total_cost) == micros(fakes.bill_for(query_of(config))) == 0


async def test_cancel_mid_enrichment_stops_paid_calls(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=60, latency_s=0.3)
    with fakes, running_stack(tmp_path, fakes, {"ENRICHMENT_CONCURRENCY": "4"}) as stack:
        config = campaign("Cancelton", max_results=40)
        query = query_of(config)
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, config)
            started = lambda j: j.stage == ENRICHING and j.metrics.leads_enriched >= 1  # noqa: E731
            await watch_for(stub, job_id, started, within=120)
            cancelled_at = time.monotonic()
            job = await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10)
            # Answered at once, CANCELLING until the calls under way have reported.
            assert job.status == jobs_pb2.JOB_STATUS_CANCELLING, describe(job)
            final = await watch_for(stub, job_id, lambda j: is_terminal(j.status), within=60)
            assert final.status == jobs_pb2.JOB_STATUS_CANCELLED, describe(final)
            await asyncio.sleep(2.5)
            late = [
                f"{name} {r.method} {r.path} at cancel+{r.ts - cancelled_at:.2f}s"
                for name, r in fakes.requests_for(query)
                if name in ("hunter", "neverbounce") and r.ts > cancelled_at + 1.0
            ]
            assert not late, "paid calls after the cancel:\n" + "\n".join(late)
            # Terminal means final: the cost it ended with is the bill, and stays so.
            billed = micros(fakes.bill_for(query))
            assert micros(final.metrics.total_cost) == billed, f"{describe(final)} billed={billed}"
            job = await get_job(stub, job_id)
            assert job == final, f"changed after CANCELLED: {describe(job)}"
            assert job.metrics.leads_enriched < job.metrics.qualified_leads, describe(job)
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10)
            assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def drain_worker_then_jobs(
    stack: Stack,
    fakes: FakeProviders,
    stub: jobs_pb2_grpc.JobServiceStub,
    watcher: Watcher,
    query: str,
) -> None:
    """SIGTERM the only enrichment worker mid-task, then the jobs service mid-watch."""
    procs = stack.processes
    hunter_calls = lambda: len(fakes.hunter.requests_for(query))  # noqa: E731
    await until(lambda: hunter_calls() >= 1, 120, "enrichment calls in flight")

    # The only enrichment worker, mid-task: it drains and exits 0; a new one resumes.
    code = await asyncio.to_thread(procs["enrichment"].stop, SHUTDOWN_GRACE_S + 5)
    assert code == 0, f"enrichment exited {code}:\n{procs['enrichment'].log_tail()}"
    assert not is_terminal((await get_job(stub, watcher.job_id)).status)
    await restart_killed(procs["enrichment"])

    # The jobs service, while the job is frozen: it exits 0 and the watch stream ends;
    # the watcher resumes on the restarted service and gets the terminal snapshot.
    async with frozen(fakes):
        resumes = len(watcher.resumes)
        code = await asyncio.to_thread(procs["jobs"].stop, SHUTDOWN_GRACE_S + 5)
        assert code == 0, f"jobs exited {code}:\n{procs['jobs'].log_tail()}"
        await until(lambda: len(watcher.resumes) > resumes, 10, "the watch to end")
        print(f"watch ended: {watcher.resumes[resumes:]}")
        await restart_killed(procs["jobs"])


async def test_sigterm_drains_a_worker(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=25, every_domain_has_emails=True, latency_s=0.5)
    with fakes, running_stack(tmp_path, fakes, {"ENRICHMENT_CONCURRENCY": "2"}) as stack:
        config = campaign("Drainville", max_results=10)
        query = query_of(config)
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, config)
            watcher = Watcher(job_id)
            async with watching([watcher], stack.jobs_addr) as tasks:
                await drain_worker_then_jobs(stack, fakes, stub, watcher, query)
                await asyncio.wait_for(tasks[0], timeout=120)
            await asyncio.sleep(2 * ACK_WAIT_S)  # any redelivered report is in by now
            job = await get_job(stub, job_id)
            await check_job(stub, fakes, job, query)
            assert not watcher.problem(job), watcher.problem(job)
