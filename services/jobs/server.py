"""Process start-up and shutdown of the jobs service (``python -m services.jobs``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.common import bus, gc_freeze
from services.common.addresses import is_loopback
from services.common.errors import ConfigError
from services.common.logs import lifecycle, setup_logging
from services.common.metrics import MetricsServer, consumer_lag, refresh_every
from services.common.settings import Settings
from services.common.signals import stop_on_signals
from services.common.tracing import setup_tracing, shutdown_tracing
from services.jobs import db, metrics
from services.jobs.api import JobService
from services.jobs.auth import AuthInterceptor, TokenVerifier, set_local_user
from services.jobs.changes import Changes
from services.jobs.commands import Commands
from services.jobs.deliveries import WebhookRpcs
from services.jobs.estimator import Estimator
from services.jobs.fanout import Fanout
from services.jobs.metrics import RpcMetricsInterceptor
from services.jobs.outbox import Outbox
from services.jobs.outcomes import Outcomes
from services.jobs.page_tokens import PageTokens
from services.jobs.partitions import Membership
from services.jobs.publishing import Publisher
from services.jobs.report_consumer import ReportConsumer
from services.jobs.retry import Retries
from services.jobs.schedule_rpcs import ScheduleRpcs
from services.jobs.scheduler import Scheduler
from services.jobs.schedules import Schedules
from services.jobs.statuses import abort
from services.jobs.submits import Submits
from services.jobs.watchdog import Watchdog
from services.jobs.webhook_sender import WebhookSender

log = logging.getLogger(__name__)

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
MAX_MESSAGE_BYTES = 1024 * 1024
REFLECTION_V1 = "grpc.reflection.v1"
REFLECTION_V1_SERVICE = f"{REFLECTION_V1}.ServerReflection"
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


def check_auth_mode(settings: Settings) -> None:
    """AUTH_MODE=none gives every caller the one local user: only on loopback."""
    if settings.auth_mode == "none" and not is_loopback(settings.jobs_grpc_addr):
        raise ConfigError(
            f"AUTH_MODE=none serves every caller as one user, so it listens on loopback only; "
            f"JOBS_GRPC_ADDR={settings.jobs_grpc_addr} is not. Use AUTH_MODE=jwt, or bind "
            "127.0.0.1"
        )


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.grpc_tls_cert:
        return None
    key = Path(settings.grpc_tls_key).read_bytes()
    cert = Path(settings.grpc_tls_cert).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


def _add_reflection_v1_file() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in the default descriptor pool, so
    reflection describes the v1 service as well. grpcio-reflection ships v1alpha only
    (grpc/grpc#38576); v1 is the same messages field for field under another package, so
    the file is v1alpha's with the package (and the options naming it) replaced."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(REFLECTION_V1_FILE)
        return  # added already (a second server in this process, or a future library)
    except KeyError:
        pass
    alpha = reflection_pb2.DESCRIPTOR.package
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = REFLECTION_V1_FILE, REFLECTION_V1
    file.options.Clear()
    file.options.java_package = f"io.{REFLECTION_V1}"
    file.options.java_outer_classname = "ServerReflectionProto"
    file.options.java_multiple_files = True
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"

    def renamed(type_name: str) -> str:  # ".grpc.reflection.v1alpha.X" -> "...v1.X"
        prefix = f".{alpha}."
        if type_name.startswith(prefix):
            return f".{REFLECTION_V1}.{type_name.removeprefix(prefix)}"
        return type_name

    for message in file.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = renamed(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool.AddSerializedFile(file.SerializeToString())


def add_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serve server reflection under both ``grpc.reflection.v1`` (what current clients ask
    first) and ``grpc.reflection.v1alpha``, listing ``service_names`` and both reflection
    services. One servicer answers both: a v1 request or response is, byte for byte, the
    v1alpha message of the same name."""
    _add_reflection_v1_file()
    names = (*service_names, REFLECTION_V1_SERVICE, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )


# Calls waiting to be taken up that gRPC core keeps before refusing new ones (see above).
MAX_PENDING_CALLS = 20_000


def build_grpc_server(
    servicer: JobService, settings: Settings
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A server with the JobService, health and reflection on JOBS_GRPC_ADDR (port 0 ok),
    authenticated by AUTH_MODE and encrypted when GRPC_TLS_CERT/KEY are set."""
    verifier = TokenVerifier(settings) if settings.auth_mode == "jwt" else None
    server = grpc.aio.server(
        # Metrics outermost: refused calls (UNAUTHENTICATED) are counted too.
        interceptors=[RpcMetricsInterceptor(), AuthInterceptor(verifier, abort=abort)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Calls that arrived and wait for the event loop to take them up: past the
            # soft limit gRPC core refuses new ones at random, past the hard one all of
            # them, as CANCELLED before any handler runs (defaults 1,000 and 3,000). The
            # watchers of a replica that stops all reconnect at once to the others: 2,000
            # WatchJob calls in a burst lost 140-209 to the defaults (bench/watchers.py).
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
        ],
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    addr = settings.jobs_grpc_addr
    credentials = _credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(addr)
    else:
        port = server.add_secure_port(addr, credentials)
    if port == 0:
        raise ConfigError(f"cannot listen on JOBS_GRPC_ADDR={addr}")
    return server, port, health_servicer


@dataclass(frozen=True)
class Parts:
    """The jobs service's collaborators, built once at start-up and passed in."""

    writer: db.Writer
    outbox: Outbox
    commands: Commands
    reports: ReportConsumer
    watchdog: Watchdog
    scheduler: Scheduler | None = None  # schedules' fires (services/jobs/scheduler.py)
    webhooks: WebhookSender | None = None  # completion webhooks (webhook_sender.py)


def assemble(
    settings: Settings, engine: AsyncEngine, nc: NATS, js: JetStreamContext, fanout: Fanout
) -> Parts:
    """Build the collaborators over a migrated ``engine`` and a connected ``nc``."""
    writer = db.Writer(engine)
    outbox = Outbox(js, writer)
    sender = WebhookSender(settings, writer)
    changes = Changes(writer, Publisher(nc, fanout, outbox), on_delivery=sender.wake)
    submits = Submits(settings, writer, outbox)
    commands = Commands(writer, changes, submits, Retries(settings, changes))
    membership = Membership(js, settings.report_partitions, settings.stream_replicas)
    reports = ReportConsumer(settings, js, changes, membership)
    watchdog = Watchdog(settings, writer, changes, js)
    parts = Parts(writer, outbox, commands, reports, watchdog)
    return replace(parts, scheduler=Scheduler(settings, writer, submits), webhooks=sender)


def _schedule_rpcs(settings: Settings, parts: Parts) -> ScheduleRpcs | None:
    if parts.scheduler is None:
        return None
    tokens = PageTokens(settings.effective_page_token_secret.encode())
    return ScheduleRpcs(Schedules(settings, parts.writer, tokens), parts.scheduler)


def _webhook_loop(parts: Parts, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    if parts.webhooks is None:
        return []
    return [asyncio.create_task(parts.webhooks.run(stop), name="webhooks")]


def _scheduler_loop(parts: Parts, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    if parts.scheduler is None:
        return []
    return [asyncio.create_task(parts.scheduler.run(stop), name="scheduler")]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    set_local_user(settings.local_user)
    engine = db.create_engine(settings.effective_database_url)
    await db.migrate(engine)
    sessions = db.sessionmaker(engine)
    # No echo: the fan-out hands this replica's own snapshots to its watchers directly.
    nc = await bus.connect(settings, "prospect-jobs", no_echo=True)
    js = nc.jetstream()
    await bus.ensure_topology(js, settings)
    fanout = Fanout(nc)
    await fanout.start()
    parts = assemble(settings, engine, nc, js, fanout)
    outbox = parts.outbox
    servicer = JobService(
        sessions,
        parts.commands,
        fanout,
        PageTokens(settings.effective_page_token_secret.encode()),
        max_watches_per_user=settings.max_watches_per_user,
        max_users_per_principal_per_minute=settings.max_users_per_principal_per_minute,
        list_rows_per_user_per_s=settings.list_rows_per_user_per_s,
        list_rows_per_user_burst=settings.list_rows_per_user_burst,
        schedules=_schedule_rpcs(settings, parts),
        webhooks=WebhookRpcs(
            parts.writer,
            sessions,
            PageTokens(settings.effective_page_token_secret.encode()),
            settings.webhook_hosts,
        ),
        estimator=Estimator(settings, Outcomes(sessions)),
    )
    server, port, health_servicer = build_grpc_server(servicer, settings)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    loops = [
        asyncio.create_task(parts.reports.run(stop), name="reports"),
        asyncio.create_task(outbox.run_relay(stop, settings.outbox_poll_s), name="outbox"),
        asyncio.create_task(parts.watchdog.run(stop), name="watchdog"),
        *_scheduler_loop(parts, stop),
        *_webhook_loop(parts, stop),
        asyncio.create_task(_refresh_metrics(settings, parts.writer, js, stop), name="metrics"),
    ]
    host = settings.jobs_grpc_addr.rpartition(":")[0]
    tls = " with TLS" if settings.grpc_tls_cert else ""
    gc_freeze.settle()
    lifecycle.info("jobs ready on %s:%d%s (auth %s)", host, port, tls, settings.auth_mode)
    await stop.wait()

    log.info("shutting down (grace %.0fs)", settings.shutdown_grace_s)
    await health_servicer.enter_graceful_shutdown()
    servicer.begin_shutdown()
    await server.stop(settings.shutdown_grace_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 5)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(outbox.settle(), 5)
    await fanout.stop()
    # Every publish was already acknowledged and no fetch is outstanding, so a plain close
    # loses nothing (drain would wait for the pull subscriptions' idle inboxes).
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)
    parts.writer.dispose()
    await engine.dispose()
    lifecycle.info("jobs stopped")


def main() -> None:
    settings = Settings.load_or_exit()
    setup_logging(settings.log_level, "jobs", settings.log_format)
    metrics_server = MetricsServer(settings.metrics_addr, "jobs")
    try:
        check_auth_mode(settings)
        metrics_server.start()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        raise SystemExit(2) from None
    setup_tracing("jobs")
    try:
        asyncio.run(_run(settings))
    finally:
        shutdown_tracing()
        metrics_server.stop()


async def _refresh_metrics(
    settings: Settings, writer: db.Writer, js: JetStreamContext, stop: asyncio.Event
) -> None:
    """Keep the gauges read from the database and JetStream fresh until ``stop``. Every
    replica reports every report consumer's lag (the same values: aggregate with max)."""
    lag = consumer_lag(js, bus.EVENTS_STREAM, bus.report_consumers(settings.report_partitions))
    state = metrics.state_refresh(writer, settings.stall_timeout_s)
    await asyncio.gather(refresh_every(state, stop), refresh_every(lag, stop))


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await serve(settings, stop)
