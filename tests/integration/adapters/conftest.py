"""The fake providers on loopback (75 places per query, a 1 s "slow" answer), the settings
pointing at them (ATTEMPTS attempts, a 0.5 s timeout) and an HTTP client, for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.common.providers.http import make_client
from services.common.settings import Settings
from tests.fakes import FakeProviders
from tests.integration.adapters.helpers import ATTEMPTS


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=75, slow_s=1.0) as running:
        yield running


@pytest.fixture
def settings(fakes: FakeProviders) -> Settings:
    env = {**fakes.env(), "PROVIDER_MAX_ATTEMPTS": str(ATTEMPTS), "PROVIDER_TIMEOUT_S": "0.5"}
    return Settings.from_env(env)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(settings) as http:
        yield http
