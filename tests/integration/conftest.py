"""Fixtures of the integration tests (see tests/integration/harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.cli.stack import NatsServer
from tests.integration.harness import Harness, jobs_service


@pytest.fixture
async def harness(database_url: str, nats_server: NatsServer) -> AsyncIterator[Harness]:
    """The jobs service's parts on an empty database and a fresh nats-server."""
    async with jobs_service(database_url, nats_server) as running:
        yield running
