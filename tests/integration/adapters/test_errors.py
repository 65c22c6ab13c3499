"""Every adapter fails fast on a permanent error (a wrong or missing key, exhausted
credits, a provider's refusal), after one request and billed nothing; no error carries an
API key, whether the fakes, a provider's own message or httpx's transport text holds it."""

from __future__ import annotations

import httpx
import pytest

from services.common.errors import PermanentProviderError, ProviderError
from services.common.providers.hunter import Hunter
from services.common.providers.neverbounce import NeverBounce
from services.common.settings import Settings
from tests.fakes import FakeProviders
from tests.integration.adapters.helpers import (
    ATTEMPTS,
    FAST,
    KEY,
    RecordingLimiter,
    adapter_call,
    assert_no_secret,
    fake_of,
    keys,
    mock_settings,
)


@pytest.mark.parametrize(
    ("provider", "api_key", "fault", "words"),
    [("google_places", "wrong-key", None, "google_places: INVALID_ARGUMENT (400): API key not"),
     ("google_places", "", None, "google_places: PERMISSION_DENIED (403)"),
     ("google_places", None, "bad_key", "google_places: INVALID_ARGUMENT (400)"),
     ("google_places", None, "credits_exhausted", "google_places: daily quota exhausted: "),
     ("hunter", "wrong-key", None, "hunter: invalid API key (401)"),
     ("hunter", None, "bad_key", "hunter: invalid API key (401)"),
     ("hunter", None, "credits_exhausted", "hunter: account credits exhausted (429)"),
     ("neverbounce", "wrong-key", None, "neverbounce: auth_failure: "),
     ("neverbounce", None, "bad_key", "neverbounce: auth_failure: "),
     ("neverbounce", None, "general_failure", "neverbounce: general_failure: "),
     ("neverbounce", None, "bad_referrer", "neverbounce: bad_referrer: "),
     ("neverbounce", None, "credits_exhausted", "neverbounce: general_failure: Insufficient")],
)  # fmt: skip
async def test_permanent_errors_fail_fast(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient,
    provider: str, api_key: str | None, fault: str | None, words: str,
) -> None:  # fmt: skip
    fake = fake_of(fakes, provider)
    if api_key is not None:
        settings = Settings.from_env({**fakes.env(), f"{provider.upper()}_API_KEY": api_key})
    if fault is not None:
        fake.fail_next(1, fault)
    with pytest.raises(PermanentProviderError) as caught:
        await adapter_call(provider, fakes, settings, client, RecordingLimiter())
    assert str(caught.value).startswith(words)
    assert len(fake.requests) == 1
    assert fakes.total_billed() == 0.0
    assert_no_secret(caught.value, *keys(fakes), "wrong-key")


async def test_secrets_echoed_by_providers_or_httpx_are_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/check"):
            return httpx.Response(200, json={"status": "auth_failure",
                                             "message": f"Invalid API key '{KEY}'"})  # fmt: skip
        raise httpx.ConnectError(f"cannot reach {request.url}?api_key={KEY}", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        settings = mock_settings()
        errors: list[ProviderError] = []
        for call in (
            NeverBounce(http, settings, RecordingLimiter(), retry_policy=FAST).verify("a@b.com"),
            Hunter(http, settings, RecordingLimiter(), retry_policy=FAST).find_email("b.com", ""),
        ):
            with pytest.raises(ProviderError) as caught:
                await call
            errors.append(caught.value)
    assert str(errors[0]) == "neverbounce: auth_failure: Invalid API key '[redacted]'"
    gave_up = f"(gave up after {ATTEMPTS} attempts)"
    assert str(errors[1]) == f"hunter: connection failed (ConnectError) {gave_up}"
    for error in errors:
        assert_no_secret(error, KEY)
        assert error.__context__ is None  # no chained httpx error carrying the URL
