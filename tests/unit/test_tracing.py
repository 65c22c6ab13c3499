"""services.common.tracing: when the OTEL_* variables turn tracing on, what the helpers do
off (nothing), and where a span hangs on (the W3C context in headers, a job's trace)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing

ENDPOINT = "http://127.0.0.1:4318"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, False),
    ],
)
def test_only_the_otel_variables_turn_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.requested(environ) is on


def test_setup_stays_off_without_the_variables() -> None:
    assert tracing.setup_tracing("jobs", {}) is False
    assert not tracing.enabled()


def test_off_every_helper_does_nothing() -> None:
    headers = {"Nats-Msg-Id": "x"}
    assert tracing.inject(headers) == {"Nats-Msg-Id": "x"}
    assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    assert tracing.current_traceparent() is None
    assert tracing.grpc_outgoing() == ()
    with tracing.span("x", parent="whatever") as span:
        assert span is None
    with tracing.event_span("job completed", None, None, {}) as span:
        assert span is None
    with tracing.continuing({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}):
        assert tracing.current_traceparent() is None


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory (without touching the global tracer provider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def _named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    return next(s for s in exporter.get_finished_spans() if s.name == name)


def test_a_message_carries_its_publishers_span(spans: InMemorySpanExporter) -> None:
    with tracing.span("discovery task", kind=tracing.CONSUMER):
        headers = tracing.inject({"Nats-Msg-Id": "r1"})
        stored = tracing.current_traceparent()
    assert headers["traceparent"] == stored
    with tracing.span("enrichment task", parent=headers):
        pass
    task, child = _named(spans, "discovery task"), _named(spans, "enrichment task")
    assert child.parent is not None and child.parent.span_id == task.context.span_id
    assert child.context.trace_id == task.context.trace_id


def test_work_continuing_a_message_hangs_what_it_causes_under_the_sender(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("enrichment task"):
        headers = tracing.inject({})
    with tracing.continuing(headers):
        caused = tracing.current_traceparent()  # what an outbox row of the report keeps
        with tracing.span("job completed"):
            pass
    assert caused == headers["traceparent"]
    assert tracing.current_traceparent() is None  # the sender's context is left after
    task, ending = _named(spans, "enrichment task"), _named(spans, "job completed")
    assert ending.parent is not None and ending.parent.span_id == task.context.span_id
    assert len(spans.get_finished_spans()) == 2  # continuing makes no span of its own


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "garbage",
        "00-" + "0" * 32 + "-" + "2" * 16 + "-01",  # an all-zero trace id
        "00-" + "1" * 32 + "-" + "0" * 16 + "-01",  # an all-zero span id
        "00-" + "G" * 32 + "-" + "2" * 16 + "-01",
        "00-" + "1" * 32 + "-" + "2" * 16 + "-01" + "x" * 100_000,
    ],
)
def test_a_malformed_traceparent_starts_no_trace_of_its_own(
    spans: InMemorySpanExporter, traceparent: str
) -> None:
    with tracing.continuing({"traceparent": traceparent}):
        assert tracing.current_traceparent() is None
    with tracing.span("discovery task", parent={"traceparent": traceparent}):
        pass
    assert _named(spans, "discovery task").parent is None


def test_a_tracestate_travels_on(spans: InMemorySpanExporter) -> None:
    headers = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "v=1"}
    with tracing.span("discovery task", parent=headers):
        out = tracing.inject({})
    assert out["traceparent"].startswith("00-" + "1" * 32 + "-")
    assert out["tracestate"] == "v=1"


def test_an_ending_caused_in_another_trace_hangs_on_the_jobs_and_links(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("SubmitCampaign"):
        home = tracing.current_traceparent()
    with tracing.span("CancelJob"):
        cause = tracing.current_traceparent()
    with tracing.event_span("job cancelled", home, cause, {tracing.JOB_ID: "job_1"}):
        pass
    submit, cancel = _named(spans, "SubmitCampaign"), _named(spans, "CancelJob")
    ending = _named(spans, "job cancelled")
    assert ending.parent is not None and ending.parent.span_id == submit.context.span_id
    assert [link.context.span_id for link in ending.links] == [cancel.context.span_id]


def test_an_ending_caused_in_the_jobs_trace_is_the_causes_child(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("SubmitCampaign"):
        home = tracing.current_traceparent()
        with tracing.span("enrichment task"):
            cause = tracing.current_traceparent()
    with tracing.event_span("job completed", home, cause, {}):
        pass
    applied, ending = _named(spans, "enrichment task"), _named(spans, "job completed")
    assert ending.parent is not None and ending.parent.span_id == applied.context.span_id
    assert not ending.links


def test_an_error_is_recorded_by_its_class_only(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("call"):
        raise ValueError("user someone@example.com")
    span = _named(spans, "call")
    assert span.status.description == "ValueError"
    assert not span.events
