"""Process start-up and shutdown of the jobs service (``python -m services.jobs``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.common import bus
from services.common.errors import ConfigError
from services.common.logs import setup_logging
from services.common.settings import Settings
from services.jobs import db
from services.jobs.api import JobService
from services.jobs.auth import set_local_user
from services.jobs.fanout import Fanout
from services.jobs.orchestrator import Orchestrator
from services.jobs.validation import PageTokens

log = logging.getLogger(__name__)

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
MAX_MESSAGE_BYTES = 1024 * 1024


def build_grpc_server(
    servicer: JobService, addr: str
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A server with the JobService, health and reflection, bound to ``addr`` (port 0 ok)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(addr)
    if port == 0:
        raise ConfigError(f"cannot listen on JOBS_GRPC_ADDR={addr}")
    return server, port, health_servicer


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    set_local_user(settings.local_user)
    engine = db.create_engine(settings.effective_database_url)
    await db.migrate(engine)
    sessions = db.sessionmaker(engine)
    nc = await bus.connect(settings, "prospect-jobs")
    js = nc.jetstream()
    await bus.ensure_topology(js, settings)
    fanout = Fanout(nc)
    await fanout.start()
    orchestrator = Orchestrator(settings, sessions, nc, js, fanout)
    servicer = JobService(
        sessions, orchestrator, fanout, PageTokens(settings.page_token_secret.encode())
    )
    server, port, health_servicer = build_grpc_server(servicer, settings.jobs_grpc_addr)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    loops = [
        asyncio.create_task(orchestrator.run_report_consumer(stop), name="reports"),
        asyncio.create_task(
            orchestrator.outbox.run_relay(stop, settings.outbox_poll_s), name="outbox"
        ),
        asyncio.create_task(orchestrator.run_watchdog(stop), name="watchdog"),
    ]
    host = settings.jobs_grpc_addr.rpartition(":")[0]
    log.info("jobs ready on %s:%d", host, port)
    await stop.wait()

    log.info("shutting down (grace %.0fs)", settings.shutdown_grace_s)
    await health_servicer.enter_graceful_shutdown()
    servicer.begin_shutdown()
    await server.stop(settings.shutdown_grace_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 5)
    await fanout.stop()
    # Every publish was already acknowledged and no fetch is outstanding, so a plain close
    # loses nothing (drain would wait for the pull subscriptions' idle inboxes).
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)
    await engine.dispose()
    log.info("jobs stopped")


def main() -> None:
    settings = Settings.load_or_exit()
    setup_logging(settings.log_level, "jobs")
    asyncio.run(_run(settings))


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)
