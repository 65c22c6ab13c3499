"""Stop on goal (CampaignConfig.target_verified_emails) on the fake providers: enrichment
queues no lead once the goal of verified emails is in, the leads left are kept as
``skipped_goal`` and nothing was asked of Hunter or NeverBounce about them; the books equal
the fakes' bills; a goal that cannot be met ends like a job without one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import grpc
import pytest

from prospect.v1 import jobs_pb2
from services.cli.client import job_service, list_all_leads, watch_until_done
from services.cli.stack import Stack
from tests.e2e.on_fakes import COMPLETED, campaign, describe, micros, query_of, running_stack
from tests.fakes import FakeProviders, RequestRecord
from tests.fakes.world import normalize_domain

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=25) as running:
        yield running


@pytest.fixture(scope="module")
def stack(fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("goal"), fakes) as running:
        yield running


def domain_of_website(website: str) -> str:
    return normalize_domain(urlsplit(website).hostname or "")


def domains_asked(fakes: FakeProviders) -> set[str]:
    """Every domain Hunter was asked about, and the domain of every address NeverBounce was
    asked to check."""

    def of_hunter(req: RequestRecord) -> str:
        if domain := req.query.get("domain", ""):
            return normalize_domain(domain)
        return fakes.world.domain_of_company(req.query.get("company", ""))

    def of_neverbounce(req: RequestRecord) -> str:
        params = {**req.query, **dict(parse_qsl(req.body.decode(errors="replace")))}
        return normalize_domain(str(params.get("email", "")).rpartition("@")[2])

    hunter = {of_hunter(r) for r in fakes.hunter.requests}
    return hunter | {of_neverbounce(r) for r in fakes.neverbounce.requests}


async def run_campaign(
    stack: Stack, config: jobs_pb2.CampaignConfig
) -> tuple[jobs_pb2.Job, list[jobs_pb2.Lead], list[jobs_pb2.JobEvent]]:
    """Submit ``config``, watch the job to its end (COMPLETED): the job, its leads, its
    history."""
    async with job_service(stack.jobs_addr) as stub:
        submitted = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
        watch = watch_until_done(stub, submitted.job_id, lambda _: None)
        job = await asyncio.wait_for(watch, 120)
        leads = await list_all_leads(stub, job.id)
        request = jobs_pb2.ListJobEventsRequest(job_id=job.id, page_size=500)
        events = await stub.ListJobEvents(request, timeout=10)
    assert job.status == COMPLETED, describe(job)
    assert job.config.target_verified_emails == config.target_verified_emails
    return job, leads, list(events.events)


async def test_a_goal_stops_enrichment_and_skips_the_rest(
    stack: Stack, fakes: FakeProviders
) -> None:
    config = campaign("Goalham", max_results=10)
    config.target_verified_emails = 2
    job, leads, events = await run_campaign(stack, config)
    m = job.metrics
    # Never more in flight than still missing: the goal is met exactly, nothing under way.
    assert m.emails_verified == 2
    skipped = [lead for lead in leads if lead.email_status == "skipped_goal"]
    assert m.leads_skipped_goal == len(skipped) > 0
    assert m.leads_enriched + m.leads_skipped_goal == m.qualified_leads == len(leads) == 10
    enriched = [lead for lead in leads if lead.email_status != "skipped_goal"]
    assert min(lead.confidence_score for lead in enriched) >= max(
        lead.confidence_score for lead in skipped
    ), "the best-scored leads are the ones enriched"
    for lead in skipped:
        assert not lead.email
        assert not {"hunter", "neverbounce"} & set(lead.cost_by_provider)
    # Nothing was asked about the skipped leads' domains (each fake domain is one place's).
    skipped_domains = {domain_of_website(lead.website) for lead in skipped if lead.website}
    assert skipped_domains
    assert not skipped_domains & domains_asked(fakes)
    # Books equal the bill: per provider, in all, and over the leads.
    query = query_of(config)
    assert m.total_cost_micros == micros(fakes.bill_for(query))
    for fake in fakes.fakes:
        assert m.cost_by_provider_micros.get(fake.name, 0) == micros(fake.bill_for(query))
    assert m.total_cost_micros == sum(lead.cost_micros for lead in leads)
    kinds = [event.kind for event in events]
    assert kinds.count("goal_reached") == 1 and kinds[-1] == "finished"
    assert kinds.index("goal_reached") < kinds.index("finished")
    assert "goal of 2 verified emails reached" in events[-1].message


async def test_a_goal_larger_than_what_is_found_enriches_every_lead(
    stack: Stack, fakes: FakeProviders
) -> None:
    config = campaign("Goalless", max_results=6)
    config.target_verified_emails = 6
    job, leads, events = await run_campaign(stack, config)
    m = job.metrics
    assert m.emails_verified < 6, "every lead verified: the goal was met, pick another location"
    assert m.leads_skipped_goal == 0
    assert m.leads_enriched == m.qualified_leads == len(leads) == 6
    assert all(lead.email_status != "skipped_goal" for lead in leads)
    assert "goal_reached" not in [event.kind for event in events]
    assert m.total_cost_micros == micros(fakes.bill_for(query_of(config)))


async def test_a_negative_goal_is_refused_naming_the_field(stack: Stack) -> None:
    config = campaign("Nowhere", max_results=6)
    config.target_verified_emails = -1
    async with job_service(stack.jobs_addr) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.target_verified_emails" in (caught.value.details() or "")
