"""Every adapter tries a transient answer again (5xx, rate limits, malformed bodies,
timeouts), a rate-limit answer penalizing the shared limiter; when the attempts run out
it is a transient error, billed nothing; Retry-After is honoured, and a long one left to
JetStream redelivery; the HTTP client uses the provider timeout."""

from __future__ import annotations

import httpx
import pytest

from services.common.errors import TransientProviderError
from services.common.providers.google_places import GooglePlaces
from services.common.providers.http import make_client
from services.common.settings import Settings
from tests.fakes import FakeProviders
from tests.integration.adapters.helpers import (
    ATTEMPTS,
    FAST,
    QUERY,
    RecordingLimiter,
    adapter_call,
    assert_no_secret,
    fake_of,
    keys,
    mock_settings,
)


@pytest.mark.parametrize(
    ("provider", "kind"),
    [("google_places", "server_error"), ("google_places", "rate_limit"),
     ("google_places", "malformed"), ("hunter", "rate_limit"), ("hunter", "server_error"),
     ("hunter", "malformed"), ("neverbounce", "rate_limit"), ("neverbounce", "temp_unavail"),
     ("neverbounce", "server_error"), ("neverbounce", "malformed"), ("neverbounce", "slow")],
)  # fmt: skip
async def test_transient_answers_are_retried(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient, provider: str, kind: str
) -> None:
    fake, limiter = fake_of(fakes, provider), RecordingLimiter()
    fake.fail_next(ATTEMPTS - 1, kind)
    result = await adapter_call(provider, fakes, settings, client, limiter)
    assert len(fake.requests) == limiter.acquired == ATTEMPTS
    # A rate-limit answer (Google 429, Hunter 403, NeverBounce throttle_triggered, none
    # with Retry-After) penalizes the shared limiter for the backoff: every worker waits.
    backoffs = [FAST.backoff(n) for n in range(1, ATTEMPTS)]
    assert limiter.penalties == (backoffs if kind == "rate_limit" else [])
    if kind != "slow":  # a provider bills the answer the client stopped waiting for
        assert sum(c.cost_usd for c in result.charges) == pytest.approx(fakes.bill_for(QUERY))


@pytest.mark.parametrize(
    ("provider", "kind", "words"),
    [("google_places", "server_error", "google_places: UNAVAILABLE (503)"),
     ("google_places", "malformed", "google_places: malformed response body"),
     ("google_places", "rate_limit", "google_places: RESOURCE_EXHAUSTED (429)"),
     ("hunter", "rate_limit", "hunter: rate limit reached (403)"),
     ("neverbounce", "rate_limit", "neverbounce: throttle_triggered: "),
     ("neverbounce", "slow", "neverbounce: timed out (ReadTimeout)")],
)  # fmt: skip
async def test_attempts_run_out_as_a_transient_error(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient,
    provider: str, kind: str, words: str,
) -> None:  # fmt: skip
    fake, limiter = fake_of(fakes, provider), RecordingLimiter()
    fake.fail_next(ATTEMPTS, kind)
    with pytest.raises(TransientProviderError) as caught:
        await adapter_call(provider, fakes, settings, client, limiter)
    assert str(caught.value).startswith(words)
    assert str(caught.value).endswith(f"(gave up after {ATTEMPTS} attempts)")
    assert len(fake.requests) == ATTEMPTS
    assert len(limiter.penalties) == (ATTEMPTS if kind == "rate_limit" else 0)
    if kind != "slow":
        assert fakes.bill_for(QUERY) == 0.0
    assert_no_secret(caught.value, *keys(fakes))


async def test_retry_after_is_honoured_and_long_waits_go_back_to_the_queue() -> None:
    answers = iter(["0.02", "120"])

    def handler(request: httpx.Request) -> httpx.Response:
        status = {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}
        return httpx.Response(429, json=status, headers={"Retry-After": next(answers)})

    limiter = RecordingLimiter()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        places = GooglePlaces(http, mock_settings(), limiter, retry_policy=FAST)
        with pytest.raises(TransientProviderError) as caught:
            await places.search("cafe", "Paris", 5)
    # 0.02 s: waited in-process; 120 s: longer than max_wait_s, left to JetStream redelivery.
    assert limiter.penalties == [0.02, 120.0]
    assert caught.value.retry_after == 120.0
    assert "after 2 attempts" in str(caught.value)


async def test_make_client_uses_the_provider_timeout(settings: Settings) -> None:
    async with make_client(settings) as http:
        assert http.timeout.read == settings.provider_timeout_s
        assert not http.follow_redirects
