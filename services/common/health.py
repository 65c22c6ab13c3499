"""gRPC health for the workers, so Kubernetes' native gRPC probes can check them too."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.errors import ConfigError


class HealthServer:
    """A gRPC server with only ``grpc.health.v1`` on ``addr``; nothing when ``addr`` is empty."""

    def __init__(self, addr: str) -> None:
        self._addr = addr
        self._server: grpc.aio.Server | None = None
        self._servicer = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> None:
        if not self._addr:
            return
        self._server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        self.port = self._server.add_insecure_port(self._addr)
        if self.port == 0:
            raise ConfigError(f"cannot listen on HEALTH_GRPC_ADDR={self._addr}")
        await self._server.start()
        await self._servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def serving(self) -> None:
        await self._servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        if self._server is not None:
            await self._servicer.enter_graceful_shutdown()
            await self._server.stop(1)
