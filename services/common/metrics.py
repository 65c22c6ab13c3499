"""Prometheus metrics: what every service exposes, and the ``/metrics`` endpoint serving them.

Each service defines its own metric objects in one module (``services/jobs/metrics.py``,
``services/common/worker_metrics.py``, ``services/web/metrics.py``) on prometheus_client's
default registry, and records them where the thing they count happens. This module holds
what all of them share:

- :data:`BUILD_INFO` and the JetStream consumer lag gauges, which every service has;
- :class:`MetricsServer`, serving the registry on ``METRICS_ADDR`` (off when empty) from a
  thread of its own, so a scrape answers even while the event loop is busy, and stopping
  cleanly at shutdown;
- :func:`refresh_every`, the loop that keeps gauges read from elsewhere (JetStream, the
  database) fresh.

Conventions (https://prometheus.io/docs/practices/naming/): every name starts with
``prospect_``, values are in base units (seconds, USD, messages), counters end in
``_total``, and label values come from small fixed sets: never a job, lead or user id.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from wsgiref.simple_server import WSGIServer

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Gauge, start_http_server

from services.common.errors import ConfigError
from services.common.logs import lifecycle

log = logging.getLogger(__name__)

# How often gauges read from JetStream or the database are refreshed (a scrape interval).
REFRESH_S = 10.0

BUILD_INFO = Gauge(
    "prospect_build_info", "Always 1: the service and the version it runs.", ["service", "version"]
)
CONSUMER_PENDING = Gauge(
    "prospect_consumer_pending_messages",
    "Messages on a JetStream consumer's stream not yet delivered to it (its backlog).",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "prospect_consumer_ack_pending_messages",
    "Messages a JetStream consumer delivered and is waiting to have acknowledged.",
    ["consumer"],
)


def version() -> str:
    """The installed version of prospect ("unknown" when it is not installed)."""
    try:
        return importlib.metadata.version("prospect")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_addr(addr: str, setting: str = "METRICS_ADDR") -> tuple[str, int]:
    """``host:port`` (``[::]:9464`` for IPv6) as (host, port); :class:`ConfigError`
    naming ``setting`` otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{setting}={addr!r} must be host:port")
    return host.strip("[]"), int(port)


class MetricsServer:
    """``/metrics`` of the default registry on ``addr`` (any path answers the same), in a
    thread of its own; nothing when ``addr`` is empty."""

    def __init__(self, addr: str, service: str) -> None:
        self._addr = addr
        self._service = service
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> None:
        """Listen (a port already in use is a :class:`ConfigError`) and set build info."""
        BUILD_INFO.labels(self._service, version()).set(1)
        if not self._addr:
            return
        host, port = parse_addr(self._addr)
        try:
            self._server, self._thread = start_http_server(port, host)
        except OSError as exc:
            raise ConfigError(f"cannot listen on METRICS_ADDR={self._addr}: {exc}") from None
        self.port = int(self._server.server_port)
        lifecycle.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)


async def refresh_every(
    refresh: Callable[[], Awaitable[None]], stop: asyncio.Event, interval: float = REFRESH_S
) -> None:
    """``refresh()`` now and every ``interval`` seconds until ``stop``; a failed refresh is
    logged (at debug: NATS or the database being down is reported elsewhere) and the
    gauges keep their last values."""
    while not stop.is_set():
        try:
            await refresh()
        except Exception as exc:
            log.debug("refreshing metrics failed: %r", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def consumer_lag(
    js: JetStreamContext, stream: str, consumers: Iterable[str]
) -> Callable[[], Awaitable[None]]:
    """A refresh of the lag gauges of ``consumers`` of ``stream`` from JetStream's consumer
    info; a consumer that does not exist (any more) has its gauges removed, and when NATS
    does not answer they keep their last values."""
    names = list(consumers)

    async def refresh() -> None:
        for name in names:
            try:
                info = await js.consumer_info(stream, name)
            except NotFoundError:
                with contextlib.suppress(KeyError):
                    CONSUMER_PENDING.remove(name)
                    CONSUMER_ACK_PENDING.remove(name)
                continue
            CONSUMER_PENDING.labels(name).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(name).set(info.num_ack_pending or 0)

    return refresh
