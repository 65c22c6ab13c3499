"""What tests on a real nats-server share: a connection with prospect's streams, consumers
and key-value buckets in place, and the worker reports published on the events stream so
far."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from prospect.v1 import work_pb2
from services.common import bus
from services.common.settings import Settings


@asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """A connection to ``settings``' nats-server and its JetStream context, the topology
    ensured as every process ensures it at start-up; closed on the way out."""
    nc = await bus.connect(settings, "test")
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js, settings)
        yield nc, js
    finally:
        await nc.close()


async def reports_so_far(js: JetStreamContext, job_id: str) -> list[work_pb2.WorkerReport]:
    """Every report on the events stream not read before, in stream order, each acked.

    The end is a sentinel report about ``job_id``, published with the stream's ack: a report
    stored before this call, or sent earlier on this connection (the stream stores one
    connection's messages in the order they were sent), comes before it. Reads partition 0's
    consumer, so the stream must have one partition (REPORT_PARTITIONS=1)."""
    sentinel = work_pb2.WorkerReport(report_id=f"sentinel.{uuid.uuid4().hex}", job_id=job_id)
    await bus.publish_proto(js, bus.events_subject(job_id), sentinel, sentinel.report_id)
    psub = await js.pull_subscribe_bind(bus.report_consumer(0), bus.EVENTS_STREAM)
    found: list[work_pb2.WorkerReport] = []
    try:
        while True:
            for msg in await psub.fetch(10, timeout=5):
                await msg.ack()
                report = work_pb2.WorkerReport.FromString(msg.data)
                if report.report_id == sentinel.report_id:
                    return found
                found.append(report)
    finally:
        await psub.unsubscribe()


async def announce_stop(nc: NATS, js: JetStreamContext, job_id: str) -> None:
    """Tell the workers ``job_id`` is stopped, as the jobs service does after a stop
    commits (the cancellation bucket's entry, and the core notice)."""
    kv = await js.key_value(bus.CANCEL_BUCKET)
    await kv.put(job_id, b"1")
    await nc.publish(bus.CANCEL_SUBJECT, job_id.encode())
