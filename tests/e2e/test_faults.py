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
import time
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import is_terminal, job_service, watch_until_done
from services.cli.stack import Stack
from tests.e2e.on_fakes import (
    ACK_WAIT_S,
    ENRICHING,
    SHUTDOWN_GRACE_S,
    Watcher,
    campaign,
    check_job,
    describe,
    frozen,
    get_job,
    job_problems,
    micros,
    query_of,
    requests_seen,
    restart_killed,
    running_stack,
    submit,
    until,
    wait_all_terminal,
    watch_for,
    watching,
)
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e


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
