"""The fake providers on loopback and an HTTP client, for each test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import FakeProviders


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    providers = FakeProviders(places_per_query=25, seed=1)
    providers.start()
    try:
        yield providers
    finally:
        providers.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client
