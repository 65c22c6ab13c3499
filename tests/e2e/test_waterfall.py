"""The email waterfall end to end (real nats-server, the three services, gRPC) on the fake
providers and fake business websites on loopback: leads say which step found their email
(website, pattern, hunter) and what each step cost, Hunter is asked only for the leads the
cheaper steps missed, and every job's books equal what the fakes billed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2_grpc
from services.cli.client import list_all_leads
from tests.e2e.on_fakes import (
    campaign,
    check_job,
    query_of,
    running_stack,
    submit,
    wait_all_terminal,
)
from tests.fakes import FakeProviders
from tests.fakes.world import normalize_domain

pytestmark = pytest.mark.e2e


async def test_a_campaign_runs_the_waterfall_and_pays_hunter_only_for_the_misses(
    tmp_path: Path,
) -> None:
    fakes = FakeProviders(places_per_query=20, websites=True)
    configs = [campaign(f"Springfield {n}", max_results=12) for n in range(3)]
    with fakes, running_stack(tmp_path, fakes) as stack:
        async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            job_ids = [await submit(stub, config) for config in configs]
            jobs = await wait_all_terminal(stub, job_ids, within=120)
            sources: Counter[str] = Counter()
            for job_id, config in zip(job_ids, configs, strict=True):
                await check_job(stub, fakes, jobs[job_id], query_of(config))
                leads = await list_all_leads(stub, job_id)
                for lead in leads:
                    sources[lead.email_source] += 1
                    # The steps' costs are the lead's enrichment; its share of discovery's
                    # cost comes on top.
                    assert 0 < sum(lead.cost_by_step_micros.values()) <= lead.cost_micros or (
                        lead.from_cache or not lead.email_source
                    )
                    if lead.email_source in ("website", "pattern") and lead.email_status == "valid":
                        assert "hunter" not in lead.cost_by_step_micros
                searched = {
                    normalize_domain(r.query["domain"])
                    for r in fakes.hunter.requests_for(query_of(config))
                }
                found_cheaply = {
                    normalize_domain(lead.email.partition("@")[2])
                    for lead in leads
                    if lead.email_source in ("website", "pattern") and lead.email_status == "valid"
                }
                assert not searched & found_cheaply
    assert sources["website"] and sources["pattern"] and sources["hunter"]
    assert fakes.websites is not None and fakes.websites.requests
