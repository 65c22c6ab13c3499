"""Tracing end to end (issue 16): real processes on the fake providers, exporting over
OTLP/HTTP to a real receiver in the test.

- One trace per campaign: the jobs, discovery and enrichment services' spans share the
  SubmitCampaign span's trace id; the submit span is the root, the discovery task hangs
  under it, every enrichment task is in it, every provider request is a child of a task,
  and the job's final state change is a span of it.
- No span attribute holds a provider key, a bearer token or an email address.
- With no ``OTEL_*`` variable set nothing is exported (the receiver hears nothing while a
  campaign runs; the first test, and the control at the end of the second, show that it
  would).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from prospect.v1 import jobs_pb2
from services.cli.client import job_service, list_all_leads
from tests.e2e.on_fakes import campaign, describe, running_stack, submit, wait_all_terminal
from tests.fakes import FakeProviders
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.e2e

SERVICES = {"prospect-jobs", "prospect-discovery", "prospect-enrichment"}
EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[A-Za-z]{2,}")
BEARER = re.compile(r"bearer\s", re.IGNORECASE)
SPAN_CLIENT = 3  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_CLIENT
# Every OTEL_* variable a launcher's environment might hold, blanked: off means off.
NO_OTEL = {
    name: ""
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SERVICE_NAME",
    )
}


def traced_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        **NO_OTEL,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def ancestors(span: ReceivedSpan, by_id: Mapping[str, ReceivedSpan]) -> list[ReceivedSpan]:
    """``span``'s parent, its parent's parent ... as far as they were received."""
    chain = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def of_job(spans: list[ReceivedSpan], job_id: str, name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name and s.attributes.get("prospect.job_id") == job_id]


def campaign_trace(spans: list[ReceivedSpan], job_id: str, leads: int) -> str:
    """What is wrong with ``job_id``'s trace among ``spans`` ("" when nothing)."""
    submits = of_job(spans, job_id, "SubmitCampaign")
    if len(submits) != 1:
        return f"{len(submits)} submit spans"
    root = submits[0]
    in_trace = [s for s in spans if s.trace_id == root.trace_id]
    by_id = {s.span_id: s for s in in_trace}
    problems = []
    if root.parent_span_id or root.service != "prospect-jobs":
        problems.append(f"the submit span is not a root of the jobs service: {root}")
    if {s.service for s in in_trace} != SERVICES:
        problems.append(f"services in the trace: {sorted({s.service for s in in_trace})}")
    for name in ("discovery task", "enrichment task", "job completed"):
        found = of_job(spans, job_id, name)
        if not found:
            problems.append(f"no {name!r} span")
        for span in found:
            if root not in ancestors(span, by_id):
                problems.append(f"{name!r} span {span.span_id} does not descend from the submit")
    if len(of_job(spans, job_id, "enrichment task")) < leads:
        problems.append(f"fewer enrichment task spans than its {leads} leads")
    # The jobs service applies a report in its sender's context: what the report causes
    # (the tasks it queues, the job's end) hangs under the task span that sent it.
    for name, parents in (
        ("enrichment task", {"discovery task"}),
        ("job completed", {"discovery task", "enrichment task"}),
    ):
        for span in of_job(spans, job_id, name):
            parent = by_id.get(span.parent_span_id)
            if parent is None or parent.name not in parents:
                problems.append(f"{name!r} span {span.span_id} is not under a {parents} span")
    requests = [s for s in in_trace if s.kind == SPAN_CLIENT]
    providers = {s.attributes.get("prospect.provider") for s in requests}
    if providers != {"google_places", "hunter", "neverbounce"}:
        problems.append(f"provider request spans of {providers}")
    for span in requests:
        parent = by_id.get(span.parent_span_id)
        if parent is None or parent.name not in ("discovery task", "enrichment task"):
            problems.append(f"provider request {span.name} is not a task's child")
        if not isinstance(span.attributes.get("http.response.status_code"), int):
            problems.append(f"provider request {span.name} has no status code")
    dangling = [s.name for s in in_trace if s.parent_span_id and s.parent_span_id not in by_id]
    if dangling:
        problems.append(f"spans whose parent never came: {sorted(set(dangling))}")
    return "; ".join(problems)


def secrets_in(spans: list[ReceivedSpan], secrets: list[str]) -> list[str]:
    """Attribute values that hold a secret, a bearer token or an email address."""
    found = []
    for span in spans:
        for key, value in span.attributes.items():
            text = str(value)
            if any(s in text for s in secrets) or EMAIL.search(text) or BEARER.search(text):
                found.append(f"{span.name}: {key}={text}")
    return found


async def test_a_campaign_is_one_trace_across_the_three_services(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=25, every_domain_has_emails=True)
    with fakes, OtlpReceiver() as receiver:
        with running_stack(tmp_path, fakes, traced_env(receiver)) as stack:
            async with job_service(stack.jobs_addr) as stub:
                job_id = await submit(stub, campaign("Tracetown, WA", max_results=4))
                job = (await wait_all_terminal(stub, [job_id], 60.0))[job_id]
                emails = [lead.email for lead in await list_all_leads(stub, job_id) if lead.email]
            assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, describe(job)
            leads = job.metrics.qualified_leads
            assert leads > 0, describe(job)

            def complete(spans: list[ReceivedSpan]) -> bool:
                return not campaign_trace(spans, job_id, leads)

            await asyncio.to_thread(receiver.wait_for, complete, 20.0)
        spans = receiver.spans()
        assert not campaign_trace(spans, job_id, leads), campaign_trace(spans, job_id, leads)
        keys = [v for k, v in fakes.env().items() if k.endswith("_API_KEY")]
        assert not secrets_in(spans, keys)
        # The check can fail: the campaign found emails, and the pattern sees them.
        assert emails and all(EMAIL.search(email) for email in emails)


async def test_nothing_is_exported_without_otel_variables(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=25, every_domain_has_emails=True)
    with fakes, OtlpReceiver() as receiver:
        with running_stack(tmp_path, fakes, NO_OTEL) as stack:
            async with job_service(stack.jobs_addr) as stub:
                job_id = await submit(stub, campaign("Quietville, WA", max_results=3))
                job = (await wait_all_terminal(stub, [job_id], 60.0))[job_id]
            assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, describe(job)
            await asyncio.sleep(1.0)  # more than the batch delay of the traced test
        assert receiver.requests == 0
        # Control: the receiver hears a span exported to it the way the services would.
        provider = TracerProvider(resource=Resource.create({"service.name": "control"}))
        exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("control").start_as_current_span("control"):
            pass
        provider.shutdown()
        assert [s.name for s in receiver.spans()] == ["control"]
