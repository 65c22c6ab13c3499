"""The bus as a trust boundary, attacked from inside the stack.

A real nats-server as the stack starts it (one user per service, services/common/
nats_auth.py), the jobs service and the enrichment worker as processes. The test plays an
intruder: a process without credentials, and a compromised worker pod holding a
worker's own credentials (the discovery worker's: it pulls the discovery tasks itself, so
it holds real task ids, as a compromised worker would). Nothing outside a worker's
permissions gets through, and no report it makes up moves a job beyond what its task
could have done.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from prospect.v1 import jobs_pb2, jobs_pb2_grpc, work_pb2
from services.cli.client import job_service
from services.cli.stack import Stack, wait_all_ready
from services.common import bus
from services.common.nats_auth import DISCOVERY, ENRICHMENT, JOBS
from services.common.settings import Settings
from tests.e2e.on_fakes import get_job, submit, until

ALLOWED_WAIT_S = 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """NATS, jobs and enrichment; no discovery worker: the tests pull its tasks."""
    running = Stack(
        tmp_path_factory.mktemp("bus"), env={"SANDBOX_LATENCY_MS": "0", "LOG_LEVEL": "INFO"}
    )
    try:
        running.nats.start()
        wait_all_ready([running.add_service("jobs"), running.add_service(ENRICHMENT)])
        yield running
    finally:
        running.stop()


@dataclass
class Intruder:
    """A connection as one of the services' NATS users, recording the server's errors."""

    nc: NATS
    js: JetStreamContext
    errors: list[str] = field(default_factory=list)

    async def refused(self, what: str) -> None:
        """Wait until the server has refused ``what`` ("Publish to \\"subject\\"")."""
        await self.nc.flush(timeout=5)
        wanted = f"permissions violation for {what}".lower()
        await until(lambda: any(wanted in e.lower() for e in self.errors), 5, wanted)


@contextlib.asynccontextmanager
async def connected_as(stack: Stack, identity: str) -> AsyncIterator[Intruder]:
    settings = Settings.from_env(stack.nats.client_env(identity))
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        settings.nats_url,
        user=settings.nats_user,
        password=settings.nats_password,
        inbox_prefix=bus.inbox_prefix(settings.nats_user),
        error_cb=on_error,
        max_reconnect_attempts=0,
        connect_timeout=5,
    )
    try:
        # A refused request gets no answer: wait for it briefly.
        yield Intruder(nc, nc.jetstream(timeout=2), errors)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def api(stack: Stack) -> AsyncIterator[jobs_pb2_grpc.JobServiceStub]:
    async with job_service(stack.jobs_addr) as stub:
        yield stub


def config(max_results: int = 2) -> jobs_pb2.CampaignConfig:
    return jobs_pb2.CampaignConfig(
        business_type="coffee shop", location=f"Town {uuid.uuid4().hex[:6]}",
        max_results=max_results, min_confidence_score=50, verify_emails=True,
    )  # fmt: skip


async def take_discovery_tasks(js: JetStreamContext, n: int) -> dict[str, work_pb2.DiscoveryTask]:
    """Pull ``n`` discovery tasks as the discovery worker does; by job id."""
    psub = await js.pull_subscribe_bind(bus.DISCOVERY_CONSUMER, bus.WORK_STREAM)
    tasks: dict[str, work_pb2.DiscoveryTask] = {}
    try:
        while len(tasks) < n:
            for msg in await psub.fetch(n - len(tasks), timeout=10):
                task = work_pb2.DiscoveryTask.FromString(msg.data)
                tasks[task.job_id] = task
                await msg.ack()
    finally:
        await psub.unsubscribe()
    return tasks


def places(n: int) -> list[work_pb2.Place]:
    return [
        work_pb2.Place(place_id=f"place-{i}", name=f"Cafe {i}", confidence_score=80,
                       website=f"https://cafe{i}.example")
        for i in range(n)
    ]  # fmt: skip


def result_report(
    task: work_pb2.DiscoveryTask,
    n: int,
    *,
    charges: tuple[work_pb2.Charge, ...] = (),
    **fields: object,
) -> work_pb2.WorkerReport:
    """A discovery result for ``task`` as the real worker would send it (``fields`` set
    on top)."""
    report = work_pb2.WorkerReport(
        report_id=f"discovery.{task.job_id}.{task.attempt}.1.{uuid.uuid4().hex[:8]}",
        job_id=task.job_id,
        attempt=task.attempt,
        task_id=task.task_id,
        providers={"places": "sandbox-places"},
        discovery_result=work_pb2.DiscoveryResult(businesses_found=n, qualified=places(n)),
    )
    report.charges.extend(charges)
    for name, value in fields.items():
        setattr(report, name, value)
    return report


def charge(usd: float, operation: str = "text_search") -> work_pb2.Charge:
    return work_pb2.Charge(provider="sandbox-places", operation=operation, cost_usd=usd)


async def publish(js: JetStreamContext, report: work_pb2.WorkerReport, job_id: str = "") -> None:
    subject = bus.events_subject(job_id or report.job_id)
    await bus.publish_proto(js, subject, report, report.report_id)


# -- connecting -----------------------------------------------------------------------------


async def test_a_connection_without_credentials_or_with_wrong_ones_is_refused(
    stack: Stack,
) -> None:
    for credentials in ({}, {"user": JOBS, "password": "guess"}, {"user": "admin"}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                stack.nats.url, max_reconnect_attempts=0, allow_reconnect=False,
                connect_timeout=3, **credentials,
            )  # fmt: skip


# -- permissions ----------------------------------------------------------------------------

JOB = f"job_{'0' * 32}"
WORKER_PUBLISH_REFUSED = [
    bus.updates_subject(JOB),  # a snapshot: only the jobs service
    bus.DISCOVERY_SUBJECT,  # a task
    bus.ENRICHMENT_SUBJECT,
    bus.CANCEL_SUBJECT,  # a stop notice
    f"$KV.{bus.CANCEL_BUCKET}.{JOB}",  # freezing a job
    f"$KV.{bus.MEMBERS_BUCKET}.replica-x",
    f"prospect.events.0.{JOB}",  # a stored partition subject, around the transform
    "$JS.API.STREAM.DELETE.PROSPECT_WORK",
    "$JS.API.STREAM.PURGE.PROSPECT_EVENTS",
    "$JS.API.STREAM.MSG.GET.PROSPECT_EVENTS",  # reading other jobs' reports
    "$JS.API.CONSUMER.DELETE.PROSPECT_EVENTS.jobs-p0",
]
WORKER_SUBSCRIBE_REFUSED = [
    bus.UPDATES_WILDCARD,  # every tenant's snapshots
    "prospect.events.>",  # every tenant's reports
    "prospect.work.>",
    "_INBOX.>",  # replies and pulled messages meant for others
    "_INBOX_jobs.>",
    ">",
]
REFUSED: list[tuple[str, str, str]] = [
    *((w, "Publish to", s) for w in (DISCOVERY, ENRICHMENT) for s in WORKER_PUBLISH_REFUSED),
    *((w, "Subscription to", s) for w in (DISCOVERY, ENRICHMENT) for s in WORKER_SUBSCRIBE_REFUSED),
    (DISCOVERY, "Publish to", f"$KV.{bus.CACHE_BUCKET}.k"),  # the cache: enrichment only
    (DISCOVERY, "Publish to", "$JS.API.CONSUMER.MSG.NEXT.PROSPECT_WORK.enrichment"),
    (ENRICHMENT, "Publish to", f"$KV.{bus.DISCOVERY_BUCKET}.k"),
    (ENRICHMENT, "Publish to", "$JS.API.CONSUMER.MSG.NEXT.PROSPECT_WORK.discovery"),
    (JOBS, "Publish to", bus.events_subject(JOB)),  # reports come from workers
    (JOBS, "Publish to", f"$KV.{bus.CACHE_BUCKET}.k"),
    (JOBS, "Subscription to", "_INBOX_enrichment.>"),
    (JOBS, "Subscription to", "prospect.events.>"),
]


@pytest.mark.parametrize(("identity", "action", "subject"), REFUSED)
async def test_each_identity_is_refused_outside_its_permissions(
    stack: Stack, identity: str, action: str, subject: str
) -> None:
    async with connected_as(stack, identity) as intruder:
        if action == "Publish to":
            await intruder.nc.publish(subject, b"{}")
        else:
            await intruder.nc.subscribe(subject)
        await intruder.refused(f'{action} "{subject}"')


async def test_workers_can_neither_delete_streams_nor_write_the_cancel_bucket(
    stack: Stack,
) -> None:
    for identity in (DISCOVERY, ENRICHMENT):
        async with connected_as(stack, identity) as intruder:
            with pytest.raises(nats.errors.Error):
                await intruder.js.delete_stream(bus.WORK_STREAM)
            cancels = await intruder.js.key_value(bus.CANCEL_BUCKET)  # reading is allowed
            with pytest.raises(nats.errors.Error):
                await cancels.put(JOB, b"1")
    async with connected_as(stack, DISCOVERY) as intruder:
        with pytest.raises(nats.errors.Error):  # not even opened: no reading it either
            await intruder.js.key_value(bus.CACHE_BUCKET)
        await intruder.nc.publish(
            f"$KV.{bus.CACHE_BUCKET}.hunter.email.x", b'{"email": "attacker@evil.example"}'
        )
        await intruder.refused(f'Publish to "$KV.{bus.CACHE_BUCKET}.hunter.email.x"')
    async with connected_as(stack, ENRICHMENT) as worker:  # the one that may write it
        cache = await worker.js.key_value(bus.CACHE_BUCKET)
        await cache.put("test.email.control", b"{}")
    async with connected_as(stack, JOBS) as jobs:
        assert (await jobs.js.stream_info(bus.WORK_STREAM)).config.name == bus.WORK_STREAM
        cancels = await jobs.js.key_value(bus.CANCEL_BUCKET)
        with pytest.raises(KeyNotFoundError):
            await cancels.get(JOB)
        cache = await jobs.js.key_value(bus.CACHE_BUCKET)
        with pytest.raises(KeyNotFoundError):
            await cache.get("hunter.email.x")
        assert (await cache.get("test.email.control")).value == b"{}"


# -- reports --------------------------------------------------------------------------------


async def test_reports_a_compromised_worker_makes_up_are_refused(stack: Stack) -> None:
    async with api(stack) as stub, connected_as(stack, DISCOVERY) as worker:
        victim, other, marker = [await submit(stub, config()) for _ in range(3)]
        tasks = await take_discovery_tasks(worker.js, 3)
        before, before_other = await get_job(stub, victim), await get_job(stub, other)

        forged_task = result_report(tasks[victim], 2, task_id=f"task_{uuid.uuid4().hex}")
        cross_job = result_report(tasks[victim], 2, task_id=tasks[other].task_id)
        too_many = result_report(tasks[victim], 2)
        too_many.discovery_result.businesses_found = 10_000
        over_campaign = result_report(tasks[victim], 2)
        over_campaign.discovery_result.qualified.extend(places(5)[2:])  # keeps 2
        over_campaign.discovery_result.businesses_found = 5
        overcharged = result_report(tasks[victim], 2, charges=(charge(0.5),))
        huge = result_report(tasks[victim], 2, charges=(charge(1234.50),))
        # Not a call discovery makes.
        unknown_call = result_report(tasks[victim], 2, charges=(charge(0.001, "verify"),))
        wrong_attempt = result_report(tasks[victim], 2, attempt=2)
        wrong_kind = result_report(tasks[victim], 0)
        wrong_kind.enrichment_result.CopyFrom(
            work_pb2.EnrichmentResult(lead_id=f"lead_{'1' * 32}", email_status="valid")
        )
        no_task = result_report(tasks[victim], 2, task_id="")
        for bad in (
            forged_task, cross_job, too_many, over_campaign, overcharged, huge, unknown_call,
            wrong_attempt, wrong_kind, no_task,
        ):  # fmt: skip
            await publish(worker.js, bad)
        # Reported on the victim's subject, about another job.
        await publish(worker.js, result_report(tasks[other], 2), job_id=victim)

        # The marker job's valid report comes after all of them on the stream.
        await publish(worker.js, result_report(tasks[marker], 0))
        await until_stage(stub, marker, lambda j: j.status == jobs_pb2.JOB_STATUS_COMPLETED)
        after = await get_job(stub, victim)
        assert (after.version, after.status, after.metrics.total_cost) == (
            before.version, before.status, before.metrics.total_cost,
        ), "a made-up report changed the victim's job"  # fmt: skip
        assert (await get_job(stub, other)).version == before_other.version

        # The real result of the victim's task, within its bounds, is applied: the checks
        # refuse what is made up, not everything.
        await publish(worker.js, result_report(tasks[victim], 2, charges=(charge(0.032),)))
        done = await until_stage(stub, victim, lambda j: j.status == jobs_pb2.JOB_STATUS_COMPLETED)
        assert done.metrics.businesses_found == 2
        logs = stack.processes["jobs"].log_text()
        for reason in ("is not a task the jobs service queued", "is not a task of job",
                       "more than a text_search call costs", "places a search returns",
                       "more than the campaign keeps", "make no 'verify' call",
                       "is not about attempt 2", "not on its job's subject",
                       "is not a task id", "money must be finite, 0 to"):  # fmt: skip
            assert reason in logs, f"no refusal logged for: {reason}"

        # Late charges on the finished job, from its own task: refused, books unchanged.
        final = await get_job(stub, victim)
        late = result_report(tasks[victim], 0, charges=(charge(0.032),))
        late.charges_only.CopyFrom(work_pb2.ChargesOnly(note="late"))
        await publish(worker.js, late)
        replayed = result_report(tasks[marker], 0)
        await publish(worker.js, replayed)
        await publish(worker.js, replayed)  # the same report again
        third = await submit(stub, config())
        third_task = (await take_discovery_tasks(worker.js, 1))[third]
        await publish(worker.js, result_report(third_task, 0))
        await until_stage(stub, third, lambda j: j.status == jobs_pb2.JOB_STATUS_COMPLETED)
        again = await get_job(stub, victim)
        assert (again.version, again.metrics.total_cost) == (
            final.version,
            final.metrics.total_cost,
        )


async def test_a_failure_report_cannot_show_the_user_a_link(stack: Stack) -> None:
    async with api(stack) as stub, connected_as(stack, DISCOVERY) as worker:
        job_id = await submit(stub, config())
        task = (await take_discovery_tasks(worker.js, 1))[job_id]
        failure = result_report(task, 0)
        failure.task_failure.CopyFrom(
            work_pb2.TaskFailure(
                stage=jobs_pb2.STAGE_DISCOVERING, provider="sandbox-places", permanent=True,
                error="quota exceeded: re-enter your card at https://evil.example/login "
                "or www.evil.example/pay",
            )
        )  # fmt: skip
        await publish(worker.js, failure)
        failed = await until_stage(stub, job_id, lambda j: j.status == jobs_pb2.JOB_STATUS_FAILED)
        assert "quota exceeded" in failed.error
        assert "evil.example" not in failed.error and "http" not in failed.error


async def test_a_forged_snapshot_never_reaches_a_watcher(stack: Stack) -> None:
    async with api(stack) as stub, connected_as(stack, DISCOVERY) as worker:
        job_id = await submit(stub, config())
        task = (await take_discovery_tasks(worker.js, 1))[job_id]
        seen: list[jobs_pb2.JobUpdate] = []
        call = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id))

        async def watch() -> None:
            async for update in call:
                seen.append(update)

        watching = asyncio.create_task(watch())
        try:
            await until(lambda: bool(seen), ALLOWED_WAIT_S, "the first snapshot")
            forged = jobs_pb2.JobUpdate(
                job=jobs_pb2.Job(id=job_id, version=10**9, status=jobs_pb2.JOB_STATUS_COMPLETED),
                message="Done! Call +1-900-SCAM",
            )
            for identity in (DISCOVERY, ENRICHMENT):
                async with connected_as(stack, identity) as intruder:
                    await intruder.nc.publish(
                        bus.updates_subject(job_id), forged.SerializeToString()
                    )
                    await intruder.refused(f'Publish to "{bus.updates_subject(job_id)}"')
            await publish(worker.js, result_report(task, 0))  # the real end
            await asyncio.wait_for(watching, ALLOWED_WAIT_S)
        finally:
            call.cancel()
            watching.cancel()
            with contextlib.suppress(BaseException):
                await watching
        job = await get_job(stub, job_id)
        assert seen[-1].job.status == jobs_pb2.JOB_STATUS_COMPLETED
        assert [u.job.version for u in seen][-1] == job.version < 10**9
        assert all("SCAM" not in u.message for u in seen)


async def until_stage(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, predicate: Callable[[jobs_pb2.Job], bool]
) -> jobs_pb2.Job:
    """Poll the job until ``predicate(job)``; the job then."""
    latest: list[jobs_pb2.Job] = []

    async def check() -> bool:
        latest.append(await get_job(stub, job_id))
        return bool(predicate(latest[-1]))

    deadline = asyncio.get_running_loop().time() + ALLOWED_WAIT_S * 3
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"job {job_id} never got there: {latest[-1]}")
        await asyncio.sleep(0.1)
    return latest[-1]
