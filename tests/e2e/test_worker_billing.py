"""Books equal the bill, and budgets hold, when an enrichment worker is killed (issue: the
worker side of the report path).

- A request is on the books from the moment it leaves the worker: a worker SIGKILLed while
  its tasks wait for rate-limit slots leaves no charge for the requests the provider never
  received.
- A lead's allowance holds across deliveries: a task redelivered after its worker was
  killed past its paid call spends only what its predecessor left, so the job's books never
  pass ``budget_limit``.

The kill comes while the fake Hunter holds its answers and has been quiet for a moment:
every task is then either inside a request Hunter received (and billed: every domain has
emails, so each search costs its list price) or waiting for its slot, never half-way.
These need the jobs service's handling of settled intents and stopped tasks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from prospect.v1 import jobs_pb2
from services.cli.client import job_service, list_all_leads
from services.cli.stack import Stack
from tests.e2e.on_fakes import (
    ACK_WAIT_S,
    campaign,
    describe,
    get_job,
    job_problems,
    micros,
    query_of,
    restart_killed,
    running_stack,
    submit,
    until,
    wait_all_terminal,
)
from tests.fakes import (
    HUNTER_CREDIT_USD,
    NEVERBOUNCE_CHECK_USD,
    TEXT_SEARCH_ENTERPRISE_USD,
    FakeProviders,
)

pytestmark = pytest.mark.e2e

QUIET_S = 0.5
# A held search stays in flight until the kill; it must not time out into a retry.
HELD = {"PROVIDER_TIMEOUT_S": "120"}


async def kill_enrichment_while_hunter_holds(stack: Stack, fakes: FakeProviders) -> None:
    """Once Hunter has been quiet for a moment, kill -9 the enrichment worker, let Hunter
    answer again and start a new worker (its Hunter rate at full speed)."""
    quiet = await asyncio.to_thread(fakes.hunter.wait_quiet, QUIET_S, 60.0)
    assert quiet, "email searches kept reaching Hunter while it held its answers"
    worker = stack.processes["enrichment"]
    worker.kill()
    fakes.hunter.release()
    worker.env.update(RATE_LIMIT_HUNTER_RPS="50", RATE_LIMIT_HUNTER_BURST="10")
    await restart_killed(worker)


async def test_a_worker_killed_while_its_tasks_wait_for_slots_books_only_what_left(
    tmp_path: Path,
) -> None:
    fakes = FakeProviders(places_per_query=25, every_domain_has_emails=True)
    # One email search every two seconds: the other leads' tasks wait for their slots.
    env = {**HELD, "RATE_LIMIT_HUNTER_RPS": "0.5", "RATE_LIMIT_HUNTER_BURST": "1"}
    with fakes, running_stack(tmp_path, fakes, env) as stack:
        config = campaign("Slotville", max_results=8)
        query = query_of(config)
        fakes.hunter.hold()
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, config)
            await until(lambda: len(fakes.hunter.requests) >= 2, 120, "two email searches")
            await kill_enrichment_while_hunter_holds(stack, fakes)
            # Some leads with a website had not reached Hunter: they were waiting.
            websites = sum(1 for lead in await list_all_leads(stub, job_id) if lead.website)
            sent_before_kill = len(fakes.hunter.requests_for(query))
            assert sent_before_kill < websites, (sent_before_kill, websites)

            await wait_all_terminal(stub, [job_id], within=180)
            await asyncio.sleep(2 * ACK_WAIT_S)  # a late or redelivered report is in by now
            job = await get_job(stub, job_id)
            problems = await job_problems(stub, fakes, job, query)
            assert not problems, "\n".join(problems)


async def test_a_redelivered_lead_never_takes_the_books_past_the_budget(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=25, every_domain_has_emails=True)
    lead_price = HUNTER_CREDIT_USD + NEVERBOUNCE_CHECK_USD
    with fakes, running_stack(tmp_path, fakes, HELD) as stack:
        config = campaign("Budgetburg", max_results=6)
        # One search page and one lead: a lead paying twice for its search passes it.
        config.budget_limit = TEXT_SEARCH_ENTERPRISE_USD + lead_price
        query = query_of(config)
        fakes.hunter.hold()  # the worker dies after its searches left, before any answer
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, config)
            await until(lambda: len(fakes.hunter.requests) >= 1, 120, "an email search")
            await kill_enrichment_while_hunter_holds(stack, fakes)

            await wait_all_terminal(stub, [job_id], within=180)
            await asyncio.sleep(2 * ACK_WAIT_S)
            job = await get_job(stub, job_id)
            assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, describe(job)
            spent, billed = micros(job.metrics.total_cost), micros(fakes.bill_for(query))
            assert spent == billed, f"{describe(job)}: billed {billed}"
            assert spent <= micros(config.budget_limit), describe(job)
            for fake in fakes.fakes:
                charged = job.metrics.cost_by_provider.get(fake.name, 0.0)
                assert micros(charged) == micros(fake.bill_for(query)), fake.name
