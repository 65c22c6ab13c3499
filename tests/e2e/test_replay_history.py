"""Replay and history (issue 17, parts 3 and 4) on the fake providers: RetryJob after a
bad-key failure completes once the key is fixed, without paying again for anything the
first job got; and a job's history (retried, cancelled, replayed) reads in order."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import job_service, watch_until_done
from services.cli.stack import wait_all_ready
from tests.e2e.cli import ok, run_cli
from tests.e2e.on_fakes import (
    ENRICHING,
    campaign,
    describe,
    micros,
    query_of,
    running_stack,
    submit,
    watch_for,
)
from tests.fakes import FakeProviders

WRONG_KEY = "hk-wrong-key-0000"


async def history(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> list[jobs_pb2.JobEvent]:
    """Every entry of ``job_id``'s history, read two at a time (the pages must join up)."""
    events: list[jobs_pb2.JobEvent] = []
    token = ""
    while True:
        request = jobs_pb2.ListJobEventsRequest(job_id=job_id, page_size=2, page_token=token)
        page = await stub.ListJobEvents(request, timeout=10)
        events += page.events
        token = page.next_page_token
        if not token:
            break
    whole = await stub.ListJobEvents(
        jobs_pb2.ListJobEventsRequest(job_id=job_id, page_size=500), timeout=10
    )
    assert list(whole.events) == events
    stamps = [e.at.ToNanoseconds() for e in events]
    assert stamps == sorted(stamps)
    return events


def in_order(kinds: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` appears in ``kinds`` in this order (others may come between)."""
    rest = iter(kinds)
    return all(any(k == want for k in rest) for want in expected)


def repeated(bills: list[str]) -> list[str]:
    return [subject for subject, n in Counter(bills).items() if n > 1]


async def run_to_end(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> jobs_pb2.Job:
    return await asyncio.wait_for(watch_until_done(stub, job_id, lambda _: None), 120)


async def test_replay_after_a_bad_key_pays_only_for_what_the_first_job_lacked(
    tmp_path: Path,
) -> None:
    fakes = FakeProviders(places_per_query=12, every_domain_has_emails=True)
    with fakes, running_stack(tmp_path, fakes, {"HUNTER_API_KEY": WRONG_KEY}) as stack:
        config = campaign("Keyport", max_results=6)
        query = query_of(config)
        async with job_service(stack.jobs_addr) as stub:
            first_id = await submit(stub, config)
            first = await run_to_end(stub, first_id)
            assert first.status == jobs_pb2.JOB_STATUS_FAILED, describe(first)
            assert "hunter" in first.error
            # Nothing can be retried twice or before it ends; a running job is refused.
            google_before = Counter(b.operation for b in fakes.google.billed if b.job_key == query)
            billed_before = sum(f.total_billed() for f in fakes.fakes)

            # The key fixed: the enrichment worker restarted with the right one.
            stack.processes["enrichment"].stop()
            wait_all_ready(
                [stack.add_service("enrichment", env={"HUNTER_API_KEY": fakes.hunter.api_key})]
            )
            printed = ok(await asyncio.to_thread(run_cli, stack.jobs_addr, "retry", first_id))
            retry_id = printed.split(" as job ")[1].split()[0]
            again = await stub.RetryJob(jobs_pb2.RetryJobRequest(job_id=first_id), timeout=10)
            assert again.job_id == retry_id  # retried once: asking again answers it
            second = await run_to_end(stub, retry_id)
            assert second.status == jobs_pb2.JOB_STATUS_COMPLETED, describe(second)
            first = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=first_id), timeout=10)
            assert (first.retried_by, second.retry_of) == (second.id, first_id)
            assert second.config == first.config
            leads = await stub.ListLeads(
                jobs_pb2.ListLeadsRequest(job_id=second.id, page_size=500), timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RetryJob(jobs_pb2.RetryJobRequest(job_id=second.id), timeout=10)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            first_history = [e.kind for e in await history(stub, first_id)]
            second_history = [e.kind for e in await history(stub, second.id)]

    # Discovery was not paid again: no second search, no second details of a place.
    google_after = Counter(b.operation for b in fakes.google.billed if b.job_key == query)
    assert google_after == google_before
    assert not repeated([b.subject for b in fakes.google.billed])
    # No second Hunter or NeverBounce call for what was already answered.
    assert not repeated([b.subject for b in fakes.hunter.billed])
    assert not repeated([b.subject for b in fakes.neverbounce.billed])
    # The new job's books hold only the new spend.
    new_spend = sum(f.total_billed() for f in fakes.fakes) - billed_before
    assert second.metrics.total_cost_micros == micros(new_spend)
    assert sum(lead.cost_micros for lead in leads.leads) == second.metrics.total_cost_micros
    assert second.metrics.qualified_leads == first.metrics.qualified_leads
    assert in_order(first_history, ["submitted", "provider_error", "finished", "retried_by"])
    assert first_history[-1] == "retried_by"
    assert in_order(second_history, ["submitted", "stage", "finished"])
    assert "provider_error" not in second_history


async def test_the_history_of_a_job_retried_cancelled_and_replayed_reads_in_order(
    tmp_path: Path,
) -> None:
    env = {
        "MAX_DELIVER": "2",
        "PROVIDER_MAX_ATTEMPTS": "2",
        "JOB_MAX_ATTEMPTS": "5",
        "ENRICHMENT_CONCURRENCY": "1",
    }
    fakes = FakeProviders(places_per_query=12, latency_s=0.2)
    with fakes, running_stack(tmp_path, fakes, env) as stack:
        # Discovery's first attempt fails on every try (two deliveries of two calls): the
        # task's failure is retried as attempt 2, which goes through.
        fakes.google.fail_next(4, "server_error")
        config = campaign("Replayville", max_results=8)
        async with job_service(stack.jobs_addr) as stub:
            job_id = await submit(stub, config)
            started = lambda j: j.stage == ENRICHING and j.metrics.leads_enriched >= 1  # noqa: E731
            await watch_for(stub, job_id, started, within=120)
            await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10)
            cancelled = await run_to_end(stub, job_id)
            assert cancelled.status == jobs_pb2.JOB_STATUS_CANCELLED, describe(cancelled)
            assert cancelled.attempts >= 2
            fakes.wait_quiet()
            billed_before = sum(f.total_billed() for f in fakes.fakes)
            retry = await stub.RetryJob(
                jobs_pb2.RetryJobRequest(job_id=job_id, idempotency_key="replay-1"), timeout=10
            )
            second = await run_to_end(stub, retry.job_id)
            assert second.status == jobs_pb2.JOB_STATUS_COMPLETED, describe(second)
            # The leads the cancelled job enriched come with it, paid for once.
            assert second.metrics.leads_from_cache >= cancelled.metrics.leads_enriched >= 1
            new_spend = sum(f.total_billed() for f in fakes.fakes) - billed_before
            assert second.metrics.total_cost_micros == micros(new_spend)
            for fake in fakes.fakes:
                assert not repeated([b.subject for b in fake.billed]), fake.name
            first = await history(stub, job_id)
            replayed = await history(stub, retry.job_id)
            shown = await asyncio.to_thread(
                run_cli, stack.jobs_addr, "history", job_id, "--format", "csv"
            )

    kinds = [e.kind for e in first]
    rows = list(csv.reader(io.StringIO(ok(shown))))
    assert rows[0] == ["at", "kind", "stage", "message"]
    assert [row[1] for row in rows[1:]] == kinds
    assert kinds[0] == "submitted" and kinds[-1] == "retried_by", kinds
    assert in_order(
        kinds,
        ["submitted", "stage", "retry", "stage", "cancel_requested", "finished", "retried_by"],
    ), kinds
    assert kinds.count("finished") == 1 and kinds.count("cancel_requested") == 1
    stages = [jobs_pb2.Stage.Name(e.stage) for e in first if e.kind == "stage"]
    assert in_order(stages, ["STAGE_DISCOVERING", "STAGE_SCORING", "STAGE_ENRICHING"]), stages
    retry_entry = next(e for e in first if e.kind == "retry")
    assert "attempt 2" in retry_entry.message and "google_places" in retry_entry.message
    finished = next(e for e in first if e.kind == "finished")
    assert finished.message.startswith("Cancelled")
    assert retry.job_id in first[-1].message
    assert replayed[0].kind == "submitted" and job_id in replayed[0].message
    assert replayed[-1].kind == "finished"
    assert replayed[-1].message.startswith("Completed")
