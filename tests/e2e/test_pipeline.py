"""End to end: real nats-server, the three services as separate processes, gRPC over a
socket. A campaign runs to COMPLETED and the promises of docs/design.md hold along the way."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack, free_port

pytestmark = pytest.mark.e2e

TERMINAL = {
    jobs_pb2.JOB_STATUS_COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
}


def campaign(**overrides: object) -> jobs_pb2.CampaignConfig:
    values: dict[str, object] = dict(
        business_type="coffee shop",
        location="Seattle, WA",
        max_results=8,
        min_confidence_score=40,
        verify_emails=True,
    )
    values.update(overrides)
    return jobs_pb2.CampaignConfig(**values)  # type: ignore[arg-type]


async def watch_all(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> list[jobs_pb2.JobUpdate]:
    updates = []
    async for update in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), timeout=120):
        updates.append(update)
    return updates


async def all_leads(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> list[jobs_pb2.Lead]:
    leads: list[jobs_pb2.Lead] = []
    token = ""
    while True:
        page = await stub.ListLeads(
            jobs_pb2.ListLeadsRequest(job_id=job_id, page_size=3, page_token=token)
        )
        leads += page.leads
        token = page.next_page_token
        if not token:
            return leads


def assert_well_formed(updates: list[jobs_pb2.JobUpdate]) -> None:
    """Versions strictly increase; progress and stage never go back; ends terminal."""
    versions = [u.job.version for u in updates]
    assert versions == sorted(set(versions)), versions
    progress = [u.job.progress for u in updates]
    assert progress == sorted(progress), progress
    stages = [u.job.stage for u in updates]
    assert stages == sorted(stages), stages
    assert all(u.message for u in updates)
    assert updates[-1].job.status in TERMINAL
    assert sum(u.job.status in TERMINAL for u in updates) == 1


async def test_campaign_runs_to_completion(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        submitted = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=campaign()))
        assert submitted.status == jobs_pb2.JOB_STATUS_PENDING
        assert submitted.job_id.startswith("job_") and submitted.campaign_id

        updates = await watch_all(stub, submitted.job_id)
        assert_well_formed(updates)
        final = updates[-1].job
        assert final.status == jobs_pb2.JOB_STATUS_COMPLETED, final.error
        assert (final.stage, final.progress) == (jobs_pb2.STAGE_DONE, 100)
        stages_seen = {u.job.stage for u in updates}
        assert {jobs_pb2.STAGE_ENRICHING, jobs_pb2.STAGE_DONE} <= stages_seen
        assert any("contacts" in u.message and "$" in u.message for u in updates)

        m = final.metrics
        assert m.businesses_found >= m.qualified_leads >= m.leads_enriched > 0
        assert m.leads_enriched == m.qualified_leads  # no budget: every lead enriched
        assert m.sandbox and m.providers["places"] == "sandbox"
        assert m.emails_verified <= m.emails_found <= m.leads_enriched

        leads = await all_leads(stub, submitted.job_id)
        assert len(leads) == m.qualified_leads
        assert len({lead.place_id for lead in leads}) == len(leads)
        assert round(sum(lead.cost for lead in leads), 6) == round(m.total_cost, 6)
        assert m.total_cost > 0
        scores = [lead.confidence_score for lead in leads]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 40
        assert round(sum(scores) / len(scores), 2) == round(m.avg_confidence, 2)
        assert all(lead.email_status not in ("", "pending") for lead in leads)

        got = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id))
        assert got.version == final.version and got.status == final.status
        assert got.completed_at.seconds >= got.started_at.seconds >= got.created_at.seconds > 0

        # A watcher arriving after the end gets the terminal snapshot and the stream ends.
        late = await watch_all(stub, submitted.job_id)
        assert [u.job.version for u in late] == [final.version]
        resumed = [
            u
            async for u in stub.WatchJob(
                jobs_pb2.WatchJobRequest(job_id=submitted.job_id, after_version=final.version)
            )
        ]
        assert resumed == []

        listed = await stub.ListJobs(jobs_pb2.ListJobsRequest(status=jobs_pb2.JOB_STATUS_COMPLETED))
        assert submitted.job_id in [j.id for j in listed.jobs]


async def test_two_jobs_replicas_both_stream_one_job(stack: Stack) -> None:
    second = stack.start_jobs_replica()
    assert second.grpc_addr
    async with (
        grpc.aio.insecure_channel(stack.jobs_addr) as one,
        grpc.aio.insecure_channel(second.grpc_addr) as two,
    ):
        stub_one = jobs_pb2_grpc.JobServiceStub(one)
        stub_two = jobs_pb2_grpc.JobServiceStub(two)
        # Slow enough to be watched from its first steps on both replicas.
        submitted = await stub_two.SubmitCampaign(
            jobs_pb2.SubmitCampaignRequest(config=campaign(max_results=12))
        )
        seen_one, seen_two = await asyncio.gather(
            watch_all(stub_one, submitted.job_id), watch_all(stub_two, submitted.job_id)
        )
    for seen in (seen_one, seen_two):
        assert_well_formed(seen)
        assert seen[-1].job.status == jobs_pb2.JOB_STATUS_COMPLETED
        assert len(seen) > 3  # live updates, not just the terminal snapshot
    assert seen_one[-1].job.version == seen_two[-1].job.version


async def test_submit_with_the_same_idempotency_key_returns_the_same_job(stack: Stack) -> None:
    key = uuid.uuid4().hex
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.SubmitCampaignRequest(config=campaign(), idempotency_key=key)
        first = await stub.SubmitCampaign(request)
        second = await stub.SubmitCampaign(request)
        assert first.job_id == second.job_id and first.campaign_id == second.campaign_id
        await watch_all(stub, first.job_id)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (campaign(business_type=""), "config.business_type"),
        (campaign(business_type="x" * 201), "config.business_type"),
        (campaign(location="Seattle\x00"), "config.location"),
        (campaign(max_results=0), "config.max_results"),
        (campaign(max_results=101), "config.max_results"),
        (campaign(min_confidence_score=101), "config.min_confidence_score"),
        (campaign(budget_limit=-1), "config.budget_limit"),
        (campaign(budget_limit=float("nan")), "config.budget_limit"),
        (None, "config"),
    ],
)
async def test_bad_submissions_are_invalid_argument_naming_the_field(
    stack: Stack, config: jobs_pb2.CampaignConfig | None, field: str
) -> None:
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field + ":")


async def test_unknown_and_malformed_job_ids(stack: Stack) -> None:
    unknown = "job_" + uuid.uuid4().hex
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        calls = {
            "GetJob": lambda j: stub.GetJob(jobs_pb2.GetJobRequest(job_id=j)),
            "CancelJob": lambda j: stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=j)),
            "ListLeads": lambda j: stub.ListLeads(jobs_pb2.ListLeadsRequest(job_id=j)),
            "WatchJob": lambda j: _drain(stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=j))),
        }
        for name, call in calls.items():
            for job_id, code in ((unknown, grpc.StatusCode.NOT_FOUND),
                                 ("not-a-job", grpc.StatusCode.INVALID_ARGUMENT)):  # fmt: skip
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(job_id)
                assert info.value.code() == code, name
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    assert "job_id" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=501))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListJobs(jobs_pb2.ListJobsRequest(page_token="forged"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (info.value.details() or "")


async def _drain(stream: grpc.aio.UnaryStreamCall) -> None:
    async for _ in stream:
        pass


async def test_cancel_a_finished_job_is_failed_precondition(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        submitted = await stub.SubmitCampaign(
            jobs_pb2.SubmitCampaignRequest(config=campaign(max_results=1))
        )
        await watch_all(stub, submitted.job_id)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=submitted.job_id))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_a_running_job(tmp_path: Path) -> None:
    # Its own stack with slow providers: the job is surely still running when cancelled.
    with Stack(tmp_path, env={"SANDBOX_LATENCY_MS": "300"}) as slow:
        async with grpc.aio.insecure_channel(slow.jobs_addr) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            submitted = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=campaign()))
            cancelled = await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=submitted.job_id))
            # Answered at once; final once the discovery task has said it stopped.
            assert cancelled.status == jobs_pb2.JOB_STATUS_CANCELLING
            updates = await watch_all(stub, submitted.job_id)
            assert updates[-1].job.status == jobs_pb2.JOB_STATUS_CANCELLED
            statuses = [u.job.status for u in updates]
            assert jobs_pb2.JOB_STATUS_COMPLETED not in statuses
            got = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id))
            assert got == updates[-1].job  # final: nothing changed after the last update
            leads = await stub.ListLeads(jobs_pb2.ListLeadsRequest(job_id=submitted.job_id))
            assert {lead.email_status for lead in leads.leads} <= {"skipped_cancelled"}


async def test_health_and_reflection(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "prospect.v1.JobService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: set[str] = set()
        async for reply in reflection.ServerReflectionInfo(iter([request])):
            names |= {s.name for s in reply.list_services_response.service}
        assert {"prospect.v1.JobService", "grpc.health.v1.Health"} <= names


async def test_workers_serve_grpc_health(tmp_path: Path) -> None:
    port = free_port()
    with Stack(tmp_path) as running:
        running.add_service(
            "discovery", label="discovery-health", env={"HEALTH_GRPC_ADDR": f"127.0.0.1:{port}"}
        ).wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_services_exit_zero_on_repeated_sigterm(tmp_path: Path) -> None:
    running = Stack(tmp_path)
    try:
        running.start()
        procs = list(running.processes.values())
        for proc in procs:
            proc.terminate()
            proc.terminate()  # a launcher or the kubelet may repeat it
        codes = {proc.label: proc.stop(30) for proc in procs}
    finally:
        running.stop()
    assert codes == {"jobs": 0, "discovery": 0, "enrichment": 0}
