"""Prometheus metrics on a real stack (issue 16): after a campaign against the fake
providers, every process's ``/metrics`` parses with Prometheus' text parser and its
counters say what happened: jobs submitted and finished, provider requests equal to what
the fakes received, spend equal to the job's books and to the fakes' bills, tasks done;
and a refused provider key shows as the alertable ``auth_error`` outcome."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import job_service
from services.cli.stack import Stack
from tests.e2e.on_fakes import campaign, check_job, query_of, running_stack, submit
from tests.e2e.on_fakes import wait_all_terminal as wait_terminal
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

PROCESSES = {"jobs", "discovery", "enrichment", "web"}
Scrapes = dict[str, list[Sample]]


def scrape(url: str) -> list[Sample]:
    """Every sample of one ``/metrics`` page, through Prometheus' own text parser."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(answer.status)


def scrape_all(stack: Stack) -> Scrapes:
    urls = stack.metrics_urls()
    assert set(urls) == PROCESSES, urls
    return {label: scrape(url) for label, url in urls.items()}


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def workers(scrapes: Scrapes) -> list[Sample]:
    return scrapes["discovery"] + scrapes["enrichment"]


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


async def settled(stack: Stack, ok: Callable[[Scrapes], bool], within: float = 15) -> Scrapes:
    """Scrapes once ``ok`` holds of them (a worker counts a task once its ack is sent, a
    moment after the report that ended the job), else the last ones."""
    deadline = time.monotonic() + within
    while True:
        scrapes = await asyncio.to_thread(scrape_all, stack)
        if ok(scrapes) or time.monotonic() > deadline:
            return scrapes
        await asyncio.sleep(0.25)


async def watch_to_the_end(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> int:
    """Watch ``job_id`` until its stream ends (after the final snapshot); how many updates."""
    updates = 0
    async for _ in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id)):
        updates += 1
    return updates


@pytest.mark.timeout(300)
async def test_each_process_counts_what_a_campaign_did(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=12, every_domain_has_emails=True)
    with fakes, running_stack(tmp_path, fakes, metrics=True) as stack:
        config = campaign("Metricsburg", max_results=5)
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, config)
            watch = asyncio.create_task(watch_to_the_end(stub, job_id))
            job = (await wait_terminal(stub, [job_id], within=120))[job_id]
            await check_job(stub, fakes, job, query_of(config))
            assert await asyncio.wait_for(watch, 30) >= 2  # live updates, not only a snapshot
        for path in ("/healthz", f"/v1/jobs/{job_id}"):
            assert await asyncio.to_thread(http_status, stack.web_url + path) == 200
        leads = job.metrics.leads_enriched

        def done(scrapes: Scrapes) -> bool:
            tasks = total(scrapes["enrichment"], "prospect_tasks_total", outcome="done")
            return tasks >= leads

        scrapes = await settled(stack, done)

    jobs, web = scrapes["jobs"], scrapes["web"]
    for label, samples in scrapes.items():
        assert total(samples, "prospect_build_info", service=label) == 1
        # No label value holds a job id (or anything else per job or per user).
        assert not [s for s in samples if any(job_id in v for v in s.labels.values())]

    # The jobs service: one job in, one completed, the RPCs that did it.
    assert total(jobs, "prospect_jobs_submitted_total") == 1
    assert total(jobs, "prospect_jobs_finished_total", status="completed") == 1
    assert total(jobs, "prospect_jobs_finished_total") == 1
    assert total(jobs, "prospect_rpc_handled_total", method="SubmitCampaign", code="OK") == 1
    assert total(jobs, "prospect_rpc_handled_total", method="WatchJob", code="OK") == 1
    assert total(jobs, "prospect_rpc_handled_total", method="GetJob", code="OK") >= 2
    assert total(jobs, "prospect_rpc_duration_seconds_count", method="SubmitCampaign") == 1
    assert total(jobs, "prospect_watch_streams") == 0
    assert total(jobs, "prospect_update_delivery_seconds_count") >= 1  # the watch's update
    assert total(jobs, "prospect_report_batch_size_count") >= 1
    assert total(jobs, "prospect_report_apply_seconds_count") >= 1
    assert total(jobs, "prospect_reports_refused_total") == 0
    for name in ("prospect_consumer_pending_messages", "prospect_consumer_ack_pending_messages"):
        assert [s for s in jobs if s.name == name and s.labels["consumer"] == "jobs-p0"]
    for kind in ("discovery", "enrichment"):
        samples = scrapes[kind]
        assert [s for s in samples if s.name == "prospect_consumer_pending_messages"
                and s.labels["consumer"] == kind]  # fmt: skip

    # The workers: every request the fakes received, every dollar they billed.
    for fake in fakes.fakes:
        sent = total(workers(scrapes), "prospect_provider_requests_total", provider=fake.name)
        ok = total(
            workers(scrapes), "prospect_provider_requests_total", provider=fake.name, outcome="ok"
        )
        assert sent == ok == len(fake.requests), fake.name
        timed = "prospect_provider_request_duration_seconds_count"
        assert total(workers(scrapes), timed, provider=fake.name) == len(fake.requests)
        spent = total(workers(scrapes), "prospect_provider_spend_usd_total", provider=fake.name)
        assert micros(spent) == job.metrics.cost_by_provider_micros[fake.name], fake.name
        assert micros(spent) == micros(fake.bill_for(query_of(config))), fake.name
    spent = total(workers(scrapes), "prospect_provider_spend_usd_total")
    assert micros(spent) == job.metrics.total_cost_micros > 0
    discovery, enrichment = scrapes["discovery"], scrapes["enrichment"]
    assert total(discovery, "prospect_tasks_total", kind="discovery", outcome="done") == 1
    assert total(enrichment, "prospect_tasks_total", kind="enrichment", outcome="done") == leads
    assert total(workers(scrapes), "prospect_tasks_total") == 1 + leads
    assert total(enrichment, "prospect_task_duration_seconds_count") == leads
    assert total(enrichment, "prospect_cache_lookups_total") >= leads
    assert total(workers(scrapes), "prospect_ratelimit_answers_total") == 0
    assert total(workers(scrapes), "prospect_ratelimit_wait_seconds_count") == sum(
        len(fake.requests) for fake in fakes.fakes
    )

    # The web process: routes by template, never by path.
    assert total(web, "prospect_http_requests_total", route="/healthz", code="200") == 1
    route = "/v1/jobs/{job_id}"
    assert total(web, "prospect_http_requests_total", route=route, code="200") == 1
    assert total(web, "prospect_sse_streams") == 0


@pytest.mark.timeout(300)
async def test_a_refused_key_shows_as_auth_errors(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=8, every_domain_has_emails=True)
    with (
        fakes,
        running_stack(
            tmp_path, fakes, {"HUNTER_API_KEY": "hk-wrong-key-0000"}, metrics=True
        ) as stack,
    ):
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, campaign("Keyless Falls", max_results=3))
            job = (await wait_terminal(stub, [job_id], within=120))[job_id]
        assert job.status == jobs_pb2.JOB_STATUS_FAILED, job

        def failed(scrapes: Scrapes) -> bool:
            return total(scrapes["enrichment"], "prospect_tasks_total", outcome="failed") >= 1

        scrapes = await settled(stack, failed)

    enrichment = scrapes["enrichment"]
    refused = total(
        enrichment, "prospect_provider_requests_total", provider="hunter", outcome="auth_error"
    )
    assert refused == len(fakes.hunter.requests) > 0
    assert total(enrichment, "prospect_tasks_total", kind="enrichment", outcome="failed") >= 1
    assert total(scrapes["jobs"], "prospect_jobs_finished_total", status="failed") == 1
    # A refused key costs nothing: no spend at Hunter.
    assert total(enrichment, "prospect_provider_spend_usd_total", provider="hunter") == 0
