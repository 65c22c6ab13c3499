"""What the adapter tests share: the query, a fast retry policy, a limiter that records,
one typical call of each adapter, and the checks that no API key leaks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from services.common.providers.google_places import GooglePlaces
from services.common.providers.http import RetryPolicy
from services.common.providers.hunter import Hunter
from services.common.providers.neverbounce import NeverBounce
from services.common.settings import Settings
from tests.fakes import FakeProviders, FakeServer

QUERY_TYPE, QUERY_PLACE = "bakery", "Springfield"
QUERY = f"{QUERY_TYPE} in {QUERY_PLACE}"  # the text query GooglePlaces sends: the job key
ATTEMPTS = 3
FAST = RetryPolicy(max_attempts=ATTEMPTS, base_delay_s=0.01, max_delay_s=0.05)


class RecordingLimiter:
    """A RateLimiter that never waits; records acquisitions and penalties, and can run a
    hook before the n-th acquisition (to inject a fault mid-search)."""

    def __init__(self, before: Callable[[int], None] | None = None) -> None:
        self.acquired = 0
        self.penalties: list[float] = []
        self._before = before

    async def acquire(self) -> None:
        self.acquired += 1
        if self._before is not None:
            self._before(self.acquired)

    async def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


def keys(fakes: FakeProviders) -> tuple[str, ...]:
    return (fakes.google.api_key, fakes.hunter.api_key, fakes.neverbounce.api_key)


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc.args)


def assert_keys_not_in_urls(fakes: FakeProviders) -> None:
    for fake in fakes.fakes:
        for request in fake.requests:
            url = request.path + "?" + "&".join(f"{k}={v}" for k, v in request.query.items())
            assert not any(key in url for key in keys(fakes))


def domains_with_emails(fakes: FakeProviders) -> tuple[str, str]:
    """A domain with addresses at Hunter and one without."""
    domains = fakes.world.domains_for(QUERY)
    with_emails = next(d for d in domains if fakes.world.emails_for(d))
    without = next(d for d in domains if not fakes.world.emails_for(d))
    return with_emails, without


def known_emails(fakes: FakeProviders) -> list[str]:
    """Every address Hunter has for the domains of QUERY."""
    return [e["value"] for d in fakes.world.domains_for(QUERY) for e in fakes.world.emails_for(d)]


# -- every adapter ---------------------------------------------------------------------------


def adapter_call(
    provider: str, fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient,
    limiter: RecordingLimiter,
) -> Awaitable[Any]:  # fmt: skip
    """One typical call of ``provider``'s adapter, for data of QUERY."""
    if provider == "google_places":
        places = GooglePlaces(client, settings, limiter, retry_policy=FAST)
        return places.search(QUERY_TYPE, QUERY_PLACE, 20)
    if provider == "hunter":
        return Hunter(client, settings, limiter, retry_policy=FAST).find_email(
            domains_with_emails(fakes)[0], ""
        )
    return NeverBounce(client, settings, limiter, retry_policy=FAST).verify(known_emails(fakes)[0])


def fake_of(fakes: FakeProviders, provider: str) -> FakeServer:
    return next(f for f in fakes.fakes if f.name == provider)


# -- answers the fakes do not give (httpx.MockTransport) --------------------------------------

KEY = "secret_0123456789abcdef"


def mock_settings() -> Settings:
    return Settings(google_places_api_key=KEY, hunter_api_key=KEY, neverbounce_api_key=KEY)
