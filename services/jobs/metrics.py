"""The jobs service's Prometheus metrics (see :mod:`services.common.metrics` for the
conventions and the server).

Recorded where each thing happens: RPCs by :class:`RpcMetricsInterceptor`; submits once
their transaction commits (``submits.py``); jobs finished once the change that made them
final commits (``changes.py``); watch streams and update delivery in ``api.py``; report
batches and refusals in ``report_consumer.py``; stalls in ``watchdog.py``. Gauges read from
the database (jobs in flight, stuck jobs, outbox rows) and from JetStream (the report
consumers' lag) are refreshed by :func:`state_refresh` and
:func:`services.common.metrics.consumer_lag` every REFRESH_S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Connection, func, select

from services.jobs import machine as m
from services.jobs.db import Writer
from services.jobs.models import utcnow
from services.jobs.unit import ACTIVE, JOBS, OUTBOX

# Bounded label values.
IN_FLIGHT = tuple(s for s in m.Status if not s.terminal)
FINISHED = tuple(s for s in m.Status if s.terminal)
# Why a report was refused: undecodable, malformed (breaks the rules of its shape),
# wrong_subject (published on another job's subject), unknown_job, not_dispatched (not
# about a task this service queued, or more than that task could do or spend), failed (an
# error at each of its deliveries).
REFUSALS = ("undecodable", "malformed", "wrong_subject", "unknown_job", "not_dispatched", "failed")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_HANDLED = Counter(
    "prospect_rpc_handled",
    "RPCs of prospect.v1.JobService handled, by method and status code.",
    ["method", "code"],
)
RPC_DURATION = Histogram(
    "prospect_rpc_duration_seconds",
    "Time to answer an RPC; for WatchJob, the time to its first message.",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
JOBS_SUBMITTED = Counter("prospect_jobs_submitted", "Jobs created by SubmitCampaign.")
JOBS_FINISHED = Counter(
    "prospect_jobs_finished",
    "Jobs that became final, by status: completed, failed, cancelled.",
    ["status"],
)
JOBS_IN_FLIGHT = Gauge(
    "prospect_jobs",
    "Unfinished jobs by status: pending, processing, cancelling, failing.",
    ["status"],
)
JOBS_STUCK = Gauge(
    "prospect_jobs_stuck",
    "Pending or processing jobs with no change for longer than STALL_TIMEOUT_S.",
)
JOBS_STALLED = Counter(
    "prospect_jobs_stalled",
    "Stalled jobs the watchdog retried or failed.",
)
WATCH_STREAMS = Gauge("prospect_watch_streams", "Open WatchJob streams on this replica.")
UPDATE_DELIVERY = Histogram(
    "prospect_update_delivery_seconds",
    "Time from a worker publishing a report to the update it caused being sent to a watcher.",
    buckets=_LATENCY_BUCKETS,
)
REPORT_BATCH_SIZE = Histogram(
    "prospect_report_batch_size",
    "Reports fetched together and applied in one transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
REPORT_APPLY = Histogram(
    "prospect_report_apply_seconds",
    "Time to apply one batch of reports: its transaction and what it publishes.",
    buckets=_LATENCY_BUCKETS,
)
OUTBOX_ROWS = Gauge(
    "prospect_outbox_rows", "Outbox rows waiting to be published (or to be deleted)."
)
REPORTS_REFUSED = Counter(
    "prospect_reports_refused",
    "Worker reports refused (terminated on the stream, nothing applied), by reason.",
    ["reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "prospect_webhook_deliveries",
    "Attempts to deliver a completion webhook, by outcome: delivered (a 2xx answer), "
    "failed (tried again later), gave_up (the last attempt failed).",
    ["outcome"],
)


def job_finished(status: m.Status) -> None:
    JOBS_FINISHED.labels(status.value.lower()).inc()


def update_sent(published_at_ns: int) -> None:
    """An update caused by a report published at ``published_at_ns`` (0: none) was sent."""
    if published_at_ns > 0:
        UPDATE_DELIVERY.observe(max(0.0, (time.time_ns() - published_at_ns) / 1e9))


def report_refused(reason: str) -> None:
    REPORTS_REFUSED.labels(reason if reason in REFUSALS else "malformed").inc()


def state_refresh(writer: Writer, stall_timeout_s: float) -> Callable[[], Awaitable[None]]:
    """A refresh of the gauges read from the database: jobs in flight by status, stuck
    jobs, outbox rows."""

    def read(conn: Connection) -> tuple[dict[str, int], int, int]:
        by_status = select(JOBS.c.status, func.count()).where(
            JOBS.c.status.in_([s.value for s in IN_FLIGHT])
        )
        rows = conn.execute(by_status.group_by(JOBS.c.status))
        counts = {str(status): int(n) for status, n in rows}
        cutoff = utcnow() - timedelta(seconds=stall_timeout_s)
        stuck = select(func.count()).where(JOBS.c.status.in_(ACTIVE), JOBS.c.updated_at < cutoff)
        outbox = select(func.count()).select_from(OUTBOX)
        return counts, int(conn.scalar(stuck) or 0), int(conn.scalar(outbox) or 0)

    async def refresh() -> None:
        counts, stuck, outbox = await writer.read(read)
        for status in IN_FLIGHT:
            JOBS_IN_FLIGHT.labels(status.value.lower()).set(counts.get(status.value, 0))
        JOBS_STUCK.set(stuck)
        OUTBOX_ROWS.set(outbox)

    return refresh


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every JobService RPC by method and status code, and times it (a stream to
    its first message). Other services (health, reflection) are not counted."""

    SERVICE = "/prospect.v1.JobService/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or not full.startswith(self.SERVICE):
            return handler
        method = full.removeprefix(self.SERVICE)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The status an RPC ended with: the one it aborted with, else OK, CANCELLED when the
    client went away, UNKNOWN for an error that escaped the handler."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if exc is None:
        return "OK"
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"


def _timed_unary(method: str, behavior: Any) -> Any:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            RPC_DURATION.labels(method).observe(time.perf_counter() - started)
            RPC_HANDLED.labels(method, _code(context, failure)).inc()

    return timed


def _timed_stream(method: str, behavior: Any) -> Any:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        first = True
        failure: BaseException | None = None
        try:
            async for item in behavior(request, context):
                if first:
                    RPC_DURATION.labels(method).observe(time.perf_counter() - started)
                    first = False
                yield item
        except BaseException as exc:
            failure = exc
            raise
        finally:
            RPC_HANDLED.labels(method, _code(context, failure)).inc()

    return timed
