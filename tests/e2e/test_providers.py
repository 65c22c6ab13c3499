"""Whole campaigns against fake Google Places, Hunter and NeverBounce servers (real HTTP on
loopback, the providers' wire formats), with the services as separate processes and two
enrichment workers sharing one rate limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

RPS, BURST = 10, 2
LIMITS = {
    f"RATE_LIMIT_{name}_{kind}": str(value)
    for name in ("GOOGLE_PLACES", "HUNTER", "NEVERBOUNCE")
    for kind, value in (("RPS", RPS), ("BURST", BURST))
}
TERMINAL = {
    jobs_pb2.JOB_STATUS_COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=25) as running:
        yield running


@pytest.fixture(scope="module")
def stack(fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("providers"), env={**fakes.env(), **LIMITS})
    try:
        running.start()
        running.add_service("enrichment", label="enrichment-2").wait_ready()
        yield running
    finally:
        running.stop()


def campaign(location: str, **overrides: object) -> jobs_pb2.CampaignConfig:
    values: dict[str, object] = dict(
        business_type="bakery", location=location, max_results=12,
        min_confidence_score=0, verify_emails=True,
    )  # fmt: skip
    values.update(overrides)
    return jobs_pb2.CampaignConfig(**values)  # type: ignore[arg-type]


def query_of(config: jobs_pb2.CampaignConfig) -> str:
    """The text query the Google adapter sends: the fakes bill each job under it."""
    return f"{config.business_type} in {config.location}"


async def run(stub: jobs_pb2_grpc.JobServiceStub, config: jobs_pb2.CampaignConfig) -> jobs_pb2.Job:
    submitted = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
    last = None
    async for update in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=submitted.job_id)):
        last = update.job
    assert last is not None and last.status in TERMINAL
    return last


async def leads_of(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> list[jobs_pb2.Lead]:
    page = await stub.ListLeads(jobs_pb2.ListLeadsRequest(job_id=job_id, page_size=500))
    return list(page.leads)


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


async def test_campaigns_bill_exactly_what_the_providers_billed(
    stack: Stack, fakes: FakeProviders
) -> None:
    configs = [campaign(f"Springfield {n}") for n in range(4)]
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        jobs = await asyncio.gather(*(run(stub, c) for c in configs))
        for config, job in zip(configs, jobs, strict=True):
            assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job.error
            m = job.metrics
            assert not m.sandbox
            assert dict(m.providers) == {
                "places": "google_places", "email_finder": "hunter",
                "email_verifier": "neverbounce",
            }  # fmt: skip
            # The job's cost is what the providers billed for it, to the micro-dollar.
            assert micros(m.total_cost) == micros(fakes.bill_for(query_of(config)))
            assert micros(sum(m.cost_by_provider.values())) == micros(m.total_cost)
            assert m.qualified_leads == 12 and m.leads_enriched == 12

            leads = await leads_of(stub, job.id)
            assert micros(sum(lead.cost for lead in leads)) == micros(m.total_cost)
            for lead in leads:
                place = fakes.world.place(lead.place_id)
                assert place is not None, "leads carry the provider's places"
                assert lead.business_name == place["displayName"]["text"]
                assert lead.website == place.get("websiteUri", "")
                assert lead.phone == place.get("nationalPhoneNumber", "")
                if lead.email:
                    expected = fakes.world.neverbounce_result(lead.email)
                    assert lead.email_status == expected
                    assert fakes.world.job_of_email(lead.email) == query_of(config)
                assert micros(sum(lead.cost_by_provider.values())) == micros(lead.cost)
    # Two enrichment workers and a discovery worker together stayed inside each limit.
    for fake in fakes.fakes:
        assert fake.max_requests_in_window(1.0) <= RPS + BURST, fake.name
    # Details came with the Enterprise search page: no Place Details call was paid.
    assert fakes.google.calls("place_details") == 0


async def test_second_campaign_for_the_same_businesses_costs_less(
    stack: Stack, fakes: FakeProviders
) -> None:
    config = campaign("Shelbyville")
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        first = await run(stub, config)
        hunter_calls = fakes.hunter.calls("domain_search")
        checks = fakes.neverbounce.calls("single_check")
        second = await run(stub, config)
        assert second.status == jobs_pb2.JOB_STATUS_COMPLETED, second.error
        assert second.metrics.total_cost < first.metrics.total_cost
        assert fakes.hunter.calls("domain_search") == hunter_calls  # nothing paid again
        assert fakes.neverbounce.calls("single_check") == checks
        assert second.metrics.leads_from_cache > 0
        leads = await leads_of(stub, second.id)
        assert any(lead.from_cache for lead in leads)
        assert all(
            "hunter" not in lead.cost_by_provider and "neverbounce" not in lead.cost_by_provider
            for lead in leads
        )
        # Both campaigns together cost what the providers billed for this query.
        total = first.metrics.total_cost + second.metrics.total_cost
        assert micros(total) == micros(fakes.bill_for(query_of(config)))


async def test_transient_errors_are_retried_and_still_billed_exactly(
    stack: Stack, fakes: FakeProviders
) -> None:
    config = campaign("Capital City", max_results=6)
    fakes.hunter.fail_next(3, "server_error")
    fakes.neverbounce.fail_next(2, "rate_limit")
    fakes.google.fail_next(1, "rate_limit")
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        job = await run(jobs_pb2_grpc.JobServiceStub(channel), config)
    assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job.error
    assert job.metrics.leads_enriched == 6
    assert micros(job.metrics.total_cost) == micros(fakes.bill_for(query_of(config)))


async def test_budget_is_never_exceeded(stack: Stack, fakes: FakeProviders) -> None:
    config = campaign("Ogdenville", budget_limit=0.15)
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job = await run(stub, config)
        leads = await leads_of(stub, job.id)
    assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job.error
    m = job.metrics
    assert m.total_cost <= 0.15
    assert micros(m.total_cost) == micros(fakes.bill_for(query_of(config)))
    assert m.leads_skipped_budget > 0
    skipped = [lead for lead in leads if lead.email_status == "skipped_budget"]
    assert len(skipped) == m.leads_skipped_budget
    assert m.leads_enriched + m.leads_skipped_budget == m.qualified_leads


async def test_keys_never_appear_in_logs_or_job_records(stack: Stack, fakes: FakeProviders) -> None:
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job = await run(stub, campaign("North Haverbrook", max_results=3))
        leads = await leads_of(stub, job.id)
        listed = await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=500))
    records = json.dumps([MessageToDict(job), *map(MessageToDict, leads), MessageToDict(listed)])
    keys = [fakes.google.api_key, fakes.hunter.api_key, fakes.neverbounce.api_key]
    for text in [records, *stack.logs().values()]:
        for key in keys:
            assert key not in text


async def test_a_bad_key_fails_the_job_fast_with_a_clear_error(
    fakes: FakeProviders, tmp_path: Path
) -> None:
    env = {**fakes.env(), **LIMITS, "HUNTER_API_KEY": "hk-wrong-key-0000"}
    with Stack(tmp_path, env=env) as bad:
        async with grpc.aio.insecure_channel(bad.jobs_addr) as channel:
            job = await run(jobs_pb2_grpc.JobServiceStub(channel), campaign("Brockway"))
        logs = "\n".join(bad.logs().values())
    assert job.status == jobs_pb2.JOB_STATUS_FAILED
    assert "hunter" in job.error and "401" in job.error and "key" in job.error.lower()
    assert "hk-wrong-key-0000" not in job.error and "hk-wrong-key-0000" not in logs
    assert job.attempts == 1
