"""Process start-up and shutdown of the web process (``python -m services.web``): one
gRPC channel to the jobs API (TLS when WEB_JOBS_TLS_CA is set), the HTTP server on
WEB_ADDR, a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from aiohttp import web

from prospect.v1 import jobs_pb2_grpc
from services.common.addresses import is_loopback
from services.common.errors import ConfigError
from services.common.logs import lifecycle, setup_logging
from services.common.metrics import MetricsServer
from services.common.settings import Settings
from services.common.signals import stop_on_signals
from services.common.tracing import setup_tracing, shutdown_tracing
from services.web.app import build_app

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 3.0  # open event streams are ended then; clients resume (Last-Event-ID)


def check_auth_mode(settings: Settings) -> None:
    """AUTH_MODE=none makes every caller the one local user: the web process, like the
    jobs API, then listens on loopback only."""
    if settings.auth_mode == "none" and not is_loopback(settings.web_addr):
        raise ConfigError(
            f"AUTH_MODE=none serves every caller as one user, so it listens on loopback only; "
            f"WEB_ADDR={settings.web_addr} is not. Use AUTH_MODE=jwt, or bind 127.0.0.1"
        )


def jobs_channel(settings: Settings) -> grpc.aio.Channel:
    addr = settings.jobs_grpc_addr
    if settings.web_jobs_tls_ca:
        ca = Path(settings.web_jobs_tls_ca).read_bytes()
        return grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(ca))
    return grpc.aio.insecure_channel(addr)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    channel = jobs_channel(settings)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    app = build_app(stub, channel, settings.web_origins, settings.web_max_body_bytes)
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None
    )
    await runner.setup()
    host, _, port = settings.web_addr.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await channel.close()
        raise ConfigError(f"cannot listen on WEB_ADDR={settings.web_addr}: {exc}") from None
    origins = ", ".join(sorted(settings.web_origins)) or "same origin only"
    lifecycle.info(
        "web ready on http://%s:%s (jobs API %s, auth %s, CORS %s)",
        host, port, settings.jobs_grpc_addr, settings.auth_mode, origins,
    )  # fmt: skip
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    await channel.close()
    lifecycle.info("web stopped")


def main() -> None:
    # Tokens are checked by the jobs API they are passed on to: no key here.
    settings = Settings.load_or_exit(verifies_tokens=False)
    setup_logging(settings.log_level, "web", settings.log_format)
    setup_tracing("web")
    metrics_server = MetricsServer(settings.metrics_addr, "web")
    try:
        check_auth_mode(settings)
        metrics_server.start()
        asyncio.run(_run(settings))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        raise SystemExit(2) from None
    finally:
        metrics_server.stop()
        shutdown_tracing()


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await serve(settings, stop)
