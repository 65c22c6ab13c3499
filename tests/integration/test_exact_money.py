"""Exact money through the jobs service's parts (real database, real nats-server): a budget
given in micro-dollars only reaches the discovery task, its ledger and the machine; configs
stored before ``budget_limit_micros`` still match a new submit of the same budget; a
finished job's API view adds up exactly."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from prospect.v1 import work_pb2
from services.common import bus
from services.common.errors import AlreadyExists
from services.jobs import convert
from services.jobs.models import JobRow, TaskRow
from services.jobs.validation import validate_config
from tests.integration.harness import Harness, config, places, report


async def test_a_micros_only_budget_reaches_the_tasks_and_the_machine(harness: Harness) -> None:
    budget = 150_000
    job = await harness.commands.submit(
        "alice", validate_config(config(max_results=3, budget_limit_micros=budget)), ""
    )
    [data] = await harness.take(bus.DISCOVERY_CONSUMER, 1)
    task = work_pb2.DiscoveryTask.FromString(data)
    assert task.config.budget_limit_micros == budget and task.config.budget_limit == 0.15
    async with harness.sessions() as session:
        [row] = (await session.scalars(select(TaskRow).where(TaskRow.job_id == job.id))).all()
    assert row.allowance_micros == budget  # the discovery's ledger cap

    await harness.apply(report(job.id, "d", 0.100001, discovery_result=(
        work_pb2.DiscoveryResult(businesses_found=3, qualified=places(3)))))  # fmt: skip
    # No lead has reported its price: one lead at a time, allowed all the budget left.
    [data] = await harness.take(bus.ENRICHMENT_CONSUMER, 1)
    assert work_pb2.EnrichmentTask.FromString(data).budget_micros == budget - 100_001


async def test_a_config_stored_before_the_micros_matches_a_new_submit(harness: Harness) -> None:
    first = await harness.commands.submit("alice", validate_config(config(budget_limit=5.0)), "k")
    async with harness.sessions() as session, session.begin():
        row = await session.get(JobRow, first.id)
        assert row is not None and row.config["budget_limit_micros"] == 5_000_000
        row.config = {k: v for k, v in row.config.items() if k != "budget_limit_micros"}
    assert "budget_limit_micros" not in (await harness.job(first.id)).config
    for given in ({"budget_limit_micros": 5_000_000}, {"budget_limit": 5.0}):
        again = await harness.commands.submit("alice", validate_config(config(**given)), "k")
        assert again.id == first.id
    with pytest.raises(AlreadyExists):
        await harness.commands.submit(
            "alice", validate_config(config(budget_limit_micros=5_000_001)), "k"
        )
    echoed = convert.job_proto(await harness.job(first.id)).config
    assert (echoed.budget_limit_micros, echoed.budget_limit) == (5_000_000, 5.0)


async def test_a_finished_jobs_api_view_adds_up_exactly(harness: Harness) -> None:
    job = await harness.commands.submit("alice", validate_config(config(max_results=3)), "")
    await harness.apply(report(job.id, "d", 0.100001, discovery_result=(
        work_pb2.DiscoveryResult(businesses_found=3, qualified=places(3)))))  # fmt: skip
    tasks: list[work_pb2.EnrichmentTask] = []
    while len(tasks) < 3:  # a fetch answers with what is there (the outbox publishes soon)
        taken = await harness.take(bus.ENRICHMENT_CONSUMER, 3 - len(tasks))
        tasks += [work_pb2.EnrichmentTask.FromString(d) for d in taken]
    for i, (task, cost) in enumerate(zip(tasks, (0.042001, 0.000007, 0.123457), strict=True)):
        result = work_pb2.EnrichmentResult(lead_id=task.lead_id, email_status="not_found")
        await harness.apply(report(job.id, f"e{i}", cost, enrichment_result=result))
    row = await harness.job(job.id)
    assert row.status == "COMPLETED"
    api = convert.job_proto(row)
    leads = [convert.lead_proto(lead) for lead in await harness.leads(job.id)]
    total = 100_001 + 42_001 + 7 + 123_457
    assert api.metrics.total_cost_micros == total == sum(lead.cost_micros for lead in leads)
    assert sum(api.metrics.cost_by_provider_micros.values()) == total
    assert dict(api.metrics.cost_by_provider_micros) == {"sandbox": total}
    assert api.metrics.total_cost == total / 1e6 == api.metrics.cost_by_provider["sandbox"]
    # The discovery's 100,001 shared exactly: 33,334 + 33,334 + 33,333.
    assert sorted(lead.cost_micros for lead in leads) == sorted(
        [33_334 + 42_001, 33_334 + 7, 33_333 + 123_457]
    )
    assert all(lead.cost == lead.cost_micros / 1e6 for lead in leads)
