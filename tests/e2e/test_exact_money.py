"""Exact money end to end (real nats-server, the three services, gRPC): a finished job's
micro-dollars add up exactly, the doubles are the micros / 1e6, and a budget given only in
micro-dollars is the budget the job keeps to."""

from __future__ import annotations

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.e2e.test_pipeline import all_leads, assert_well_formed, campaign, watch_all

pytestmark = pytest.mark.e2e


async def run(stub: jobs_pb2_grpc.JobServiceStub, config: jobs_pb2.CampaignConfig) -> jobs_pb2.Job:
    submitted = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
    updates = await watch_all(stub, submitted.job_id)
    assert_well_formed(updates)
    return updates[-1].job


def assert_books_exact(job: jobs_pb2.Job, leads: list[jobs_pb2.Lead]) -> None:
    m = job.metrics
    assert leads and m.total_cost_micros > 0
    assert m.total_cost_micros == sum(lead.cost_micros for lead in leads)
    assert m.total_cost_micros == sum(m.cost_by_provider_micros.values())
    assert m.total_cost == m.total_cost_micros / 1e6
    assert set(m.cost_by_provider) == set(m.cost_by_provider_micros)
    for provider, micros in m.cost_by_provider_micros.items():
        assert m.cost_by_provider[provider] == micros / 1e6
    for lead in leads:
        assert lead.cost == lead.cost_micros / 1e6


async def test_a_finished_jobs_micros_add_up_exactly(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job = await run(stub, campaign(location="Tacoma, WA", max_results=7))
        assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job.error
        leads = await all_leads(stub, job.id)
        assert len(leads) == job.metrics.qualified_leads == 7
        assert_books_exact(job, leads)
        assert (job.config.budget_limit, job.config.budget_limit_micros) == (0.0, 0)
        got = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        assert got.metrics == job.metrics


async def test_a_budget_given_in_micros_only_is_kept_and_echoed_in_both_forms(
    stack: Stack,
) -> None:
    # Less than the search, the details and the first leads cost, not all of them.
    budget = 412_345
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        config = campaign(location="Olympia, WA", max_results=12, budget_limit_micros=budget)
        assert config.budget_limit == 0.0  # the double is not given
        job = await run(stub, config)
        assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job.error
        assert job.config.budget_limit_micros == budget
        assert job.config.budget_limit == 0.412345
        m = job.metrics
        assert 0 < m.total_cost_micros <= budget
        assert m.leads_skipped_budget > 0  # the budget bound
        assert m.leads_enriched + m.leads_skipped_budget == m.qualified_leads
        leads = await all_leads(stub, job.id)
        assert_books_exact(job, leads)
        listed = await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=50))
        [same] = [j for j in listed.jobs if j.id == job.id]
        assert (same.config.budget_limit_micros, same.config.budget_limit) == (budget, 0.412345)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (campaign(budget_limit=5.0, budget_limit_micros=5_000_001), "config.budget_limit_micros"),
        (campaign(budget_limit_micros=-1), "config.budget_limit_micros"),
        (campaign(budget_limit_micros=10_000_000_001), "config.budget_limit_micros"),
    ],
)
async def test_bad_micro_budgets_are_invalid_argument_naming_the_field(
    stack: Stack, config: jobs_pb2.CampaignConfig, field: str
) -> None:
    async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(field + ":")
        agreeing = campaign(max_results=1, budget_limit=5.0, budget_limit_micros=5_000_000)
        accepted = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=agreeing))
        await watch_all(stub, accepted.job_id)
