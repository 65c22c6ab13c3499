"""Tracing with OpenTelemetry: one trace per campaign (docs/design.md, "Tracing").

Off unless the standard variables ask for it: ``OTEL_TRACES_EXPORTER=otlp``, or an
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (and neither
``OTEL_TRACES_EXPORTER=none`` nor ``OTEL_SDK_DISABLED=true``). On, spans go over OTLP/HTTP
(protobuf) through a batch processor; the SDK itself reads the rest of the ``OTEL_*``
variables (endpoint, headers, sampler, batch delays, resource attributes). These are the
SDK's standard names, so unlike the services' own settings they are read here, once.

Off, every helper returns at its first test: no SDK is loaded and nothing is allocated per
message. The W3C trace context travels in NATS message headers (:func:`inject`) and in the
rows that outlive a request (a job's ``trace_context``, an outbox row's): a traceparent
string, which carries the sampling decision too.

Span attributes name jobs, stages, task kinds and providers (:data:`JOB_ID` ...); never a
key, a token, an email address or a URL.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

# Span attributes (the only ones prospect sets beside the HTTP status code).
JOB_ID = "prospect.job_id"
STAGE = "prospect.stage"
STATUS = "prospect.status"
PROVIDER = "prospect.provider"
OPERATION = "prospect.operation"
ATTEMPT = "prospect.attempt"
HTTP_STATUS = "http.response.status_code"
HTTP_METHOD = "http.request.method"

SERVER, CLIENT, CONSUMER = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.CONSUMER
INTERNAL = SpanKind.INTERNAL
TRACEPARENT = "traceparent"

_PROPAGATOR = TraceContextTextMapPropagator()
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None  # None: tracing is off

Parent = str | Mapping[str, str] | None  # a traceparent, or headers that may hold one


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables in ``environ`` turn tracing on."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("none", ""):
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return exporter == "" and bool((endpoint or "").strip())
    if exporter != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (only otlp): tracing off", exporter)
        return False
    return True


def setup_tracing(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on for this process when the ``OTEL_*`` variables ask for it (see the
    module's docstring); whether it is on. ``service`` names the process
    (``prospect-<service>`` unless ``OTEL_SERVICE_NAME`` says otherwise)."""
    global _provider, _tracer
    env = os.environ if environ is None else environ
    if not requested(env):
        return False
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() != "http/protobuf":
        log.warning("OTLP protocol %s is not supported (only http/protobuf): tracing off", protocol)
        return False
    # Loaded only when on: the SDK and the exporter cost an off process nothing.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; what it is
    # given wins over them, so the default name is given only when none is set.
    named = (env.get("OTEL_SERVICE_NAME") or "").strip()
    resource = Resource.create({} if named else {SERVICE_NAME: f"prospect-{service}"})
    # No sampler given: the SDK's own OTEL_TRACES_SAMPLER (default parentbased_always_on).
    provider = TracerProvider(resource=_hashed_once(resource))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("prospect")
    log.info("tracing on: spans of %s over OTLP/HTTP", resource.attributes.get(SERVICE_NAME))
    return True


def _hashed_once(resource: Resource) -> Resource:
    """``resource`` with its hash computed once. The OTLP encoder groups every span it
    exports by resource, and a Resource hashes by serialising its attributes to JSON each
    time: a third of the encoding's cost, for one resource per process."""
    from opentelemetry.sdk.resources import Resource

    class HashedResource(Resource):
        _hash: int | None = None

        def __hash__(self) -> int:
            if self._hash is None:
                self._hash = super().__hash__()
            return self._hash

    return HashedResource(dict(resource.attributes), resource.schema_url)


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop (at the process's stop; idempotent)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


# A version-00 traceparent: trace id, span id, flags (55 characters).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_LEN = 55


def _parse(traceparent: str) -> Context | None:
    """The context a traceparent names, None when it names none."""
    if len(traceparent) == _TRACEPARENT_LEN:
        return _parse_v00(traceparent)
    # Another version, or malformed (it may come from any process on the bus: not cached).
    return _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else None


@functools.lru_cache(maxsize=4096)
def _parse_v00(traceparent: str) -> Context | None:
    """Cached, its input being bounded: the reports of one task, the tasks of one job and
    the job's own stored context repeat a few strings, and the W3C propagator's parse is
    the larger part of a span's cost."""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return _PROPAGATOR.extract({TRACEPARENT: traceparent})
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    flags = TraceFlags(int(match[3], 16))
    remote = SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _context(parent: Parent) -> Context | None:
    """The context ``parent`` names, None when it names none."""
    if isinstance(parent, str):
        return _parse(parent)
    if not parent:
        return None
    traceparent = parent.get(TRACEPARENT)
    if traceparent is None:
        return None
    if parent.get("tracestate"):  # vendors' state to carry on: the propagator parses both
        return _PROPAGATOR.extract(parent)
    return _parse(traceparent)


def span(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: Parent = None,
    attributes: Mapping[str, str | int] | None = None,
    links: Sequence[Link] = (),
) -> AbstractContextManager[Span | None]:
    """A span made current for the ``with`` block, a child of ``parent`` when it names a
    context (a traceparent or message headers holding one) and of the current span
    otherwise. Off: a shared no-op context manager (yields None)."""
    if _tracer is None:
        return _NOTHING
    started = _tracer.start_span(
        name, context=_context(parent), kind=kind, attributes=attributes, links=links
    )
    return _Current(started)


class _Current:
    """Makes ``span`` current for a ``with`` block and ends it after. The SDK's
    ``start_as_current_span`` does the same through two generator context managers: this
    is its cost without them (a span is made for every task and every submit)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        # An error is recorded by its class only: its text may quote a user id or a provider.
        if kind is not None:
            self._span.set_status(StatusCode.ERROR, kind.__name__)
        otel_context.detach(self._token)  # type: ignore[arg-type]
        self._span.end()


def continuing(headers: Mapping[str, str] | None) -> AbstractContextManager[object]:
    """For the ``with`` block, the context ``headers`` carry is the current one, with no
    span of its own: work done for the sender (the jobs service applying a worker's
    report) hangs what it causes (the tasks it queues, the job's end) under the sender's
    span. Off, or no context in ``headers``: nothing changes."""
    if _tracer is None:
        return _NOTHING
    context = _context(headers)
    return _NOTHING if context is None else _Attached(context)


class _Attached:
    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context
        self._token: object = None

    def __enter__(self) -> None:
        self._token = otel_context.attach(self._context)

    def __exit__(self, *_: object) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]


def annotate(attributes: Mapping[str, str | int]) -> None:
    """Set ``attributes`` on the current span (nothing when off)."""
    if _tracer is not None:
        trace.get_current_span().set_attributes(attributes)


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's W3C context (``traceparent``, and ``tracestate`` when it has
    one) to ``headers`` (a NATS message's, gRPC metadata as a dict); ``headers`` unchanged
    when off or outside any span."""
    if _tracer is None:
        return headers
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        headers[TRACEPARENT] = _traceparent(context)
        if context.trace_state:
            headers["tracestate"] = context.trace_state.to_header()
    return headers


def grpc_outgoing() -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the current span's context (none when off)."""
    if _tracer is None:
        return ()
    return tuple(inject({}).items())


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The context ``headers`` carry; None when off or when they carry none."""
    if _tracer is None:
        return None
    return _context(headers)


def current_traceparent() -> str | None:
    """The current span's traceparent, to keep with what outlives it (a job, an outbox
    row); None when off or outside any span."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return _traceparent(context) if context.is_valid else None


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def trace_id_of(traceparent: str | None) -> int | None:
    """The trace id a traceparent names (None when it names none)."""
    context = _context(traceparent)
    if context is None:
        return None
    span_context = trace.get_current_span(context).get_span_context()
    return span_context.trace_id if span_context.is_valid else None


def event_span(
    name: str, home: str | None, cause: str | None, attributes: Mapping[str, str | int]
) -> AbstractContextManager[Span | None]:
    """A span for a change to something with a trace of its own (a job: ``home``, its
    stored traceparent), caused by the span ``cause`` (a traceparent): a child of the
    cause when that is in the home trace, else of ``home``, linked to the cause (a
    CancelJob call with a trace of its own, say)."""
    if _tracer is None:
        return _NOTHING
    home_trace, cause_trace = trace_id_of(home), trace_id_of(cause)
    if home_trace is None or cause_trace == home_trace:
        return span(name, parent=cause, attributes=attributes)
    links = [] if cause is None else _links(cause)
    return span(name, parent=home, attributes=attributes, links=links)


def _links(traceparent: str) -> list[Link]:
    context = _context(traceparent)
    if context is None:
        return []
    return [Link(trace.get_current_span(context).get_span_context())]


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Outside any span for the block (work done on behalf of many requests)."""
    if _tracer is None:
        yield
        return
    token = otel_context.attach(Context())
    try:
        yield
    finally:
        otel_context.detach(token)


def grpc_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The W3C headers among gRPC metadata (keys are lowercase there), for :func:`span`."""
    if _tracer is None or not metadata:
        return {}
    return {
        key: value
        for key, value in metadata
        if key in (TRACEPARENT, "tracestate") and isinstance(value, str)
    }
