"""NATS wiring shared by every service: connection, the JetStream topology, subjects.

The topology (streams, durable consumers, the key-value buckets) is declared here once, in
code, and created idempotently by the jobs service at start-up (a changed setting is
applied by an update); the workers, whose NATS users may not administer JetStream, wait
until what they use exists (docs/design.md, "NATS").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from services.common import tracing
from services.common.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

WORK_STREAM = "PROSPECT_WORK"
EVENTS_STREAM = "PROSPECT_EVENTS"
CANCEL_BUCKET = "PROSPECT_CANCELLED"
# What each task has spent or reserved of its budget (services/common/allowance.py).
ALLOWANCE_BUCKET = "PROSPECT_ALLOWANCES"
# What each job's discovery got from its paid calls, and who is making them
# (services/discovery/memo.py).
DISCOVERY_BUCKET = "PROSPECT_DISCOVERY"
# Shared rate limits of every provider (services/common/ratelimit.py): both workers.
RATE_LIMIT_BUCKET = "PROSPECT_RATELIMITS"
# Answers already paid for (services/common/cache.py): written by enrichment only.
CACHE_BUCKET = "PROSPECT_ENRICHMENT_CACHE"
# Which jobs replicas are alive (services/jobs/partitions.py): written by the jobs service only.
MEMBERS_BUCKET = "PROSPECT_JOBS_REPLICAS"

DISCOVERY_SUBJECT = "prospect.work.discovery"
ENRICHMENT_SUBJECT = "prospect.work.enrichment"
DISCOVERY_CONSUMER = "discovery"
ENRICHMENT_CONSUMER = "enrichment"
# The jobs service's consumers of the events stream: one per partition (see
# services/jobs/partitions.py), and one draining reports stored before the stream had
# partitions. The single shared consumer of earlier versions is removed at start-up.
REPORTS_CONSUMER_PREFIX = "jobs-p"
LEGACY_REPORTS_CONSUMER = "jobs-legacy"
SHARED_REPORTS_CONSUMER = "jobs"
CANCEL_SUBJECT = "prospect.control.cancel"

# JetStream drops a publish whose Nats-Msg-Id it saw within this window: long enough to
# cover an outbox re-publish after a crash and restart.
DUPLICATE_WINDOW_S = 600.0
CANCEL_TTL_S = 7 * 24 * 3600.0
# A job the cancel bucket did not hold is not asked about again for this long (CancelRegistry).
CLEAR_FOR_S = 1.0
CLEAR_KEPT = 10_000  # such answers kept before the expired ones are dropped
# A spend ledger outlives every redelivery and retry of the task it bounds.
ALLOWANCE_TTL_S = 7 * 24 * 3600.0
# A discovery memo outlives the stall timeout and every retry of its job's discovery.
DISCOVERY_TTL_S = 24 * 3600.0
# An idle rate-limit key is forgotten after this long; its next request starts afresh.
RATE_LIMIT_TTL_S = 3600.0
DAY_S = 86400.0
# How often a worker looks again for what the jobs service has not created yet.
TOPOLOGY_POLL_S = 0.5


def events_subject(job_id: str) -> str:
    """Subject a worker publishes its reports about one job on. The events stream stores
    them under ``prospect.events.<partition>.<job_id>`` (a subject transform)."""
    return f"prospect.events.{job_id}"


def report_consumer(partition: int) -> str:
    """The durable consumer of one partition of the events stream."""
    return f"{REPORTS_CONSUMER_PREFIX}{partition}"


def report_consumers(partitions: int) -> list[str]:
    """Every consumer of the events stream: one per partition, and the legacy one."""
    return [*(report_consumer(p) for p in range(partitions)), LEGACY_REPORTS_CONSUMER]


def job_of_report_subject(subject: str) -> str | None:
    """The job id a stored report's subject names: ``prospect.events.<partition>.<job>``,
    or ``prospect.events.<job>`` for one stored before partitions; None otherwise."""
    tokens = subject.split(".")
    if tokens[:2] != ["prospect", "events"] or len(tokens) not in (3, 4):
        return None
    if len(tokens) == 4 and not tokens[2].isdigit():
        return None
    return tokens[-1]


def updates_subject(job_id: str) -> str:
    """Core subject on which any jobs replica announces a job's new snapshot."""
    return f"prospect.updates.{job_id}"


UPDATES_WILDCARD = "prospect.updates.*"


def inbox_prefix(user: str) -> str:
    """The inbox prefix of ``user``'s connections (``_INBOX`` without a user): each
    identity may subscribe only under its own (services/common/nats_auth.py)."""
    return f"_INBOX_{user}" if user else "_INBOX"


async def connect(settings: Settings, name: str, *, no_echo: bool = False) -> NATS:
    """Connect with unlimited reconnects: a restarted nats-server is picked up again.

    ``no_echo``: the server does not send this connection its own publishes back."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_disconnected() -> None:
        log.warning("nats: disconnected")

    async def on_reconnected() -> None:
        log.info("nats: reconnected")

    credentials: dict[str, Any] = {}
    if settings.nats_user:
        credentials.update(user=settings.nats_user, password=settings.nats_password)
    if settings.nats_token:
        credentials["token"] = settings.nats_token
    if settings.nats_creds:
        credentials["user_credentials"] = settings.nats_creds
    if settings.nats_tls_ca:
        credentials["tls"] = tls_context(settings)
    return await nats.connect(
        settings.nats_url,
        name=name,
        **credentials,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        no_echo=no_echo,
        inbox_prefix=inbox_prefix(settings.nats_user),
    )


def tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS to nats-server: its certificate checked against NATS_TLS_CA, and this
    client's own certificate when NATS_TLS_CERT and NATS_TLS_KEY are set (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


def _events_transform(partitions: int) -> SubjectTransform:
    """``prospect.events.<job>`` stored as ``prospect.events.<partition>.<job>``: the server
    hashes the job id, so one job's reports always land in one partition."""
    dest = f"prospect.events.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"
    return SubjectTransform(src="prospect.events.*", dest=dest)


def _stream_configs(settings: Settings) -> list[StreamConfig]:
    common = dict(
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=settings.stream_replicas,
    )
    return [
        StreamConfig(name=WORK_STREAM, subjects=["prospect.work.>"], **common),  # type: ignore[arg-type]
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=["prospect.events.>"],
            subject_transform=_events_transform(settings.report_partitions),
            **common,  # type: ignore[arg-type]
        ),
    ]


def _consumer_configs(settings: Settings) -> list[tuple[str, ConsumerConfig]]:
    def durable(name: str, subject: str, max_ack_pending: int) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=name,
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            max_ack_pending=max_ack_pending,
            num_replicas=settings.stream_replicas,
        )

    return [
        (WORK_STREAM, durable(DISCOVERY_CONSUMER, DISCOVERY_SUBJECT, 1000)),
        (WORK_STREAM, durable(ENRICHMENT_CONSUMER, ENRICHMENT_SUBJECT, 10000)),
        *(
            (EVENTS_STREAM, durable(report_consumer(p), f"prospect.events.{p}.*", 10000))
            for p in range(settings.report_partitions)
        ),
        (EVENTS_STREAM, durable(LEGACY_REPORTS_CONSUMER, "prospect.events.*", 1000)),
    ]


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    """Create or update the streams, consumers and key-value buckets. Idempotent."""
    for config in _stream_configs(settings):
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with other settings (e.g. replicas changed): bring it in line.
            await js.update_stream(config)
    # The shared consumer of earlier versions reads every partition: a work-queue stream
    # takes no consumer beside it. What it had not acked goes to the legacy consumer.
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(EVENTS_STREAM, SHARED_REPORTS_CONSUMER)
    for stream, consumer in _consumer_configs(settings):
        await js.add_consumer(stream, consumer)
    for bucket, ttl in _bucket_ttls(settings):
        await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                ttl=ttl,
                history=1,
                replicas=settings.stream_replicas,
                storage=StorageType.FILE,
            )
        )


def _bucket_ttls(settings: Settings) -> list[tuple[str, float]]:
    buckets = [
        (CANCEL_BUCKET, CANCEL_TTL_S),
        (ALLOWANCE_BUCKET, ALLOWANCE_TTL_S),
        (DISCOVERY_BUCKET, DISCOVERY_TTL_S),
        (RATE_LIMIT_BUCKET, RATE_LIMIT_TTL_S),
    ]
    if settings.enrichment_cache_days > 0:  # 0 turns the cache off
        buckets.append((CACHE_BUCKET, settings.enrichment_cache_days * DAY_S))
    return buckets


async def _until_made(what: str, make: Callable[[], Awaitable[T]]) -> T:
    """``make()`` once what it opens exists. Only the jobs service creates the topology
    (the workers' NATS users may not), so a worker that starts first waits for it."""
    waited = False
    while True:
        try:
            return await make()
        except NotFoundError:
            if not waited:
                log.info("waiting for the jobs service to create %s", what)
                waited = True
            await asyncio.sleep(TOPOLOGY_POLL_S)


async def open_bucket(js: JetStreamContext, bucket: str) -> KeyValue:
    """The key-value bucket ``bucket``, once the jobs service has created it."""
    return await _until_made(f"the {bucket} bucket", lambda: js.key_value(bucket))


async def wait_for_consumer(js: JetStreamContext, stream: str, consumer: str) -> None:
    """Return once the durable ``consumer`` of ``stream`` exists."""
    await _until_made(f"the {consumer} consumer", lambda: js.consumer_info(stream, consumer))


async def publish_proto(js: JetStreamContext, subject: str, message: Message, msg_id: str) -> None:
    """Publish a protobuf message to JetStream, de-duplicated by ``msg_id`` (with the
    current span's trace context when tracing is on)."""
    headers = tracing.inject({"Nats-Msg-Id": msg_id})
    await js.publish(subject, message.SerializeToString(), headers=headers)


async def publish_proto_no_ack(nc: NATS, subject: str, message: Message, msg_id: str) -> None:
    """Publish a protobuf message on a subject a stream captures, without waiting for the
    stream's ack: no round trip, so nothing learns whether it was stored (the stream stores
    it, de-duplicated by ``msg_id``, when it arrives). Only for a message whose loss
    something else makes good. Raises ``nats.errors.Error`` when the client cannot take it
    (closed, or its reconnect buffer full)."""
    headers = tracing.inject({"Nats-Msg-Id": msg_id})
    await nc.publish(subject, message.SerializeToString(), headers=headers)


class CancelRegistry:
    """Which jobs are cancelled, as far as a worker knows.

    The jobs service writes a key per cancelled job into a KV bucket (durable: a worker that
    starts later still sees it) and announces it on a core subject (fast: a worker already
    running learns within milliseconds). Workers check :meth:`is_cancelled` before each
    paid call, and :meth:`refresh` before each task.

    A job the bucket did not hold is taken as not cancelled for :data:`CLEAR_FOR_S`, while
    the connection stays up: the five enrichment tasks of a lead list arrive together, and
    a bucket read each was a twentieth of the enrichment worker's CPU. The notice covers
    the gap; a cancel whose notice was lost (the jobs service stopped between its commit
    and the notice: the outbox writes the key later) is seen by the next task after that.
    """

    def __init__(self, nc: NATS, kv: KeyValue, clock: Callable[[], float] = time.monotonic) -> None:
        self._nc = nc
        self._kv = kv
        self._clock = clock
        self._cancelled: set[str] = set()
        # Job id -> (when the bucket did not hold it, the connection's reconnects then).
        self._clear: dict[str, tuple[float, int]] = {}

    @classmethod
    async def open(cls, nc: NATS, js: JetStreamContext) -> CancelRegistry:
        registry = cls(nc, await open_bucket(js, CANCEL_BUCKET))
        await nc.subscribe(CANCEL_SUBJECT, cb=registry._on_notice)
        return registry

    async def _on_notice(self, msg: Msg) -> None:
        self._cancelled.add(msg.data.decode())

    async def refresh(self, job_id: str) -> bool:
        """Whether ``job_id`` is cancelled: the notices heard, else the bucket (asked at
        most once per :data:`CLEAR_FOR_S` and connection)."""
        if job_id in self._cancelled:
            return True
        now, reconnects = self._clock(), self._nc.stats["reconnects"]
        clear = self._clear.get(job_id)
        if clear is not None and now - clear[0] < CLEAR_FOR_S and clear[1] == reconnects:
            return False
        try:
            await self._kv.get(job_id)
        except KeyNotFoundError:
            if len(self._clear) >= CLEAR_KEPT:
                self._clear = {
                    job: seen for job, seen in self._clear.items() if now - seen[0] < CLEAR_FOR_S
                }
            self._clear[job_id] = (now, reconnects)
            return False
        self._cancelled.add(job_id)
        return True

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self._cancelled
