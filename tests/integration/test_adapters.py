"""The HTTP provider adapters against the fake provider servers (real loopback HTTP).

Each adapter is driven through its wire format, errors and billing: pagination and the
60-place cap, details served from the search, charges equal to the fakes' bills, retries
after 5xx and rate-limit answers (penalizing the shared limiter), permanent errors failing
fast, malformed bodies, and API keys never appearing in an error message or a URL.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from services.common.errors import PermanentProviderError, ProviderError, TransientProviderError
from services.common.providers.google_places import GooglePlaces
from services.common.providers.http import RetryPolicy, make_client
from services.common.providers.hunter import FoundEmail, Hunter, best_email
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


# -- Google Places ---------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "pages", "found"), [(45, 3, 45), (100, 3, 60), (5, 1, 5)])
async def test_google_search_paginates_up_to_limit_and_60(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient,
    limit: int, pages: int, found: int,
) -> None:  # fmt: skip
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    page = await places.search(QUERY_TYPE, QUERY_PLACE, limit)

    assert [p.place_id for p in page.places] == [
        p["id"] for p in fakes.world.places_for(QUERY)[:found]
    ]
    assert len(fakes.google.requests) == pages
    assert {json.loads(r.body)["pageSize"] for r in fakes.google.requests} == {min(20, limit)}
    assert {(c.provider, c.operation) for c in page.charges} == {("google_places", "text_search")}
    assert sum(c.cost_usd for c in page.charges) == pytest.approx(fakes.bill_for(QUERY))
    assert fakes.bill_for(QUERY) == pytest.approx(pages * 0.035)  # Enterprise, per page
    assert_keys_not_in_urls(fakes)


async def test_google_search_stops_at_the_last_page(settings: Settings) -> None:
    with FakeProviders(places_per_query=25) as small:
        small_settings = Settings.from_env({**small.env(), "PROVIDER_MAX_ATTEMPTS": "3"})
        async with make_client(small_settings) as http:
            places = GooglePlaces(http, small_settings, RecordingLimiter(), retry_policy=FAST)
            page = await places.search(QUERY_TYPE, QUERY_PLACE, 60)
        assert len(page.places) == 25
        assert len(small.google.requests) == 2  # 20, then 5 without a nextPageToken
        assert sum(c.cost_usd for c in page.charges) == pytest.approx(small.bill_for(QUERY))


async def test_google_details_come_from_the_search_free(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    page = await places.search(QUERY_TYPE, QUERY_PLACE, 20)
    requests, billed = len(fakes.google.requests), fakes.bill_for(QUERY)

    for summary in page.places:
        assert places.details_price(summary.place_id) == 0.0
        result = await places.details(summary.place_id)
        assert result.charges == []
        truth, details = fakes.world.place(summary.place_id) or {}, result.details
        kinds = {k for c in truth["addressComponents"] for k in c["types"]}
        assert (details.name, details.address, details.website, details.phone) == (
            truth["displayName"]["text"], truth["formattedAddress"],
            truth.get("websiteUri", ""), truth.get("nationalPhoneNumber", ""),
        )  # fmt: skip
        assert (details.rating, details.review_count, details.business_status) == (
            truth.get("rating", 0.0),
            truth.get("userRatingCount", 0),
            truth["businessStatus"],
        )
        assert details.types == tuple(truth["types"])
        assert details.address_complete == ({"street_number", "postal_code"} <= kinds)
    assert len(fakes.google.requests) == requests
    assert fakes.bill_for(QUERY) == billed


async def test_google_details_of_an_unseen_place_is_one_paid_call(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    place_id = fakes.world.places_for(QUERY)[3]["id"]
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    assert places.details_price(place_id) == pytest.approx(0.020)

    result = await places.details(place_id)
    assert result.details.place_id == place_id
    assert [(c.operation, c.cost_usd) for c in result.charges] == [("place_details", 0.020)]
    assert fakes.bill_for(QUERY) == pytest.approx(0.020)  # Place Details Enterprise
    assert fakes.google.requests[0].header("X-Goog-FieldMask").startswith("id,displayName,")
    again = await places.details(place_id)  # now remembered
    assert again.charges == [] and len(fakes.google.requests) == 1


async def test_google_unknown_place_is_permanent(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    with pytest.raises(PermanentProviderError, match=r"NOT_FOUND \(404\)") as caught:
        await places.details("ChIJ" + "q" * 23)
    assert len(fakes.google.requests) == 1
    assert_no_secret(caught.value, *keys(fakes))


async def test_google_failure_after_a_page_keeps_what_was_paid_for(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    def second_page_fails(n: int) -> None:
        if n == 2:
            fakes.google.fail_next(ATTEMPTS, "server_error")

    limiter = RecordingLimiter(before=second_page_fails)
    page = await GooglePlaces(client, settings, limiter, retry_policy=FAST).search(
        QUERY_TYPE, QUERY_PLACE, 60
    )
    assert len(page.places) == 20
    assert len(page.charges) == 1
    assert sum(c.cost_usd for c in page.charges) == pytest.approx(fakes.bill_for(QUERY))


# -- Hunter ------------------------------------------------------------------------------------


def _domains(fakes: FakeProviders) -> tuple[str, str]:
    """A domain with addresses at Hunter and one without."""
    domains = fakes.world.domains_for(QUERY)
    with_emails = next(d for d in domains if fakes.world.emails_for(d))
    without = next(d for d in domains if not fakes.world.emails_for(d))
    return with_emails, without


def test_best_email_rule() -> None:
    def e(value: str, kind: str, confidence: int, status: str = "") -> FoundEmail:
        return FoundEmail(value, kind, confidence, status)

    assert best_email([]) is None
    assert best_email([e("x@a.com", "generic", 99, "invalid")]) is None
    tie = [e("ann@a.com", "personal", 90), e("info@a.com", "generic", 90)]
    assert best_email(tie) == tie[1]  # a tie goes to the address that reaches the business
    ranked = [e("bad@a.com", "personal", 99, "invalid"), e("bo@a.com", "personal", 91)]
    assert best_email([*ranked, e("hi@a.com", "generic", 80, "valid")]) == ranked[1]


async def test_hunter_finds_the_best_email_and_charges_like_the_bill(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    domain, empty = _domains(fakes)
    finder = Hunter(client, settings, RecordingLimiter(), retry_policy=FAST)

    found = await finder.find_email(domain, "Some Bakery")
    entries = fakes.world.emails_for(domain)
    expected = best_email(
        [
            FoundEmail(x["value"], x["type"], x["confidence"], x["verification"]["status"] or "")
            for x in entries
        ]
    )
    assert expected is not None and found.email == expected.value
    assert found.confidence == expected.confidence
    credits = math.ceil(len(entries) / 10)
    assert [(c.provider, c.operation) for c in found.charges] == [("hunter", "domain_search")]
    assert found.charges[0].cost_usd == pytest.approx(credits * 0.0245)

    for free in (empty, "no-such-business.example", "  "):  # "  " makes no call at all
        nothing = await finder.find_email(free, "")
        assert (nothing.email, nothing.charges) == ("", [])
    assert len(fakes.hunter.requests) == 3
    assert found.charges[0].cost_usd == pytest.approx(fakes.bill_for(QUERY))
    request = fakes.hunter.requests[0]
    assert request.header("X-API-KEY") == fakes.hunter.api_key
    assert request.query == {"domain": domain, "limit": "10"}
    assert_keys_not_in_urls(fakes)


# -- NeverBounce -------------------------------------------------------------------------------


def _emails(fakes: FakeProviders) -> list[str]:
    return [e["value"] for d in fakes.world.domains_for(QUERY) for e in fakes.world.emails_for(d)]


async def test_neverbounce_verifies_and_charges_every_check(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    verifier = NeverBounce(client, settings, RecordingLimiter(), retry_policy=FAST)
    emails = _emails(fakes)[:6]
    results = [await verifier.verify(email) for email in [*emails, emails[0]]]  # a duplicate

    assert [r.status for r in results] == [
        fakes.world.neverbounce_result(e) for e in [*emails, emails[0]]
    ]
    assert all(
        [(c.provider, c.operation, c.cost_usd) for c in r.charges]
        == [("neverbounce", "verify", 0.008)]
        for r in results
    )
    charged = sum(c.cost_usd for r in results for c in r.charges)
    assert charged == pytest.approx(fakes.bill_for(QUERY)) == pytest.approx(7 * 0.008)
    request = fakes.neverbounce.requests[0]
    assert request.method == "POST" and request.query == {}
    assert f"key={fakes.neverbounce.api_key}".encode() in request.body
    assert_keys_not_in_urls(fakes)


async def test_neverbounce_catchall_is_kept_as_catchall(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    address = next(
        f"someone{i}@catchall-{i}.example"
        for i in range(1000)
        if fakes.world.neverbounce_result(f"someone{i}@catchall-{i}.example") == "catchall"
    )
    verifier = NeverBounce(client, settings, RecordingLimiter(), retry_policy=FAST)
    verification = await verifier.verify(address)
    assert verification.status == "catchall"  # never "accept_all"
    assert sum(c.cost_usd for c in verification.charges) == pytest.approx(
        fakes.neverbounce.total_billed()
    )


# -- every adapter: transient answers, exhausted attempts, permanent errors -----------------


def _call(
    provider: str, fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient,
    limiter: RecordingLimiter,
) -> Awaitable[Any]:  # fmt: skip
    """One typical call of ``provider``'s adapter, for data of QUERY."""
    if provider == "google_places":
        places = GooglePlaces(client, settings, limiter, retry_policy=FAST)
        return places.search(QUERY_TYPE, QUERY_PLACE, 20)
    if provider == "hunter":
        return Hunter(client, settings, limiter, retry_policy=FAST).find_email(
            _domains(fakes)[0], ""
        )
    return NeverBounce(client, settings, limiter, retry_policy=FAST).verify(_emails(fakes)[0])


def _fake(fakes: FakeProviders, provider: str) -> FakeServer:
    return next(f for f in fakes.fakes if f.name == provider)


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
    fake, limiter = _fake(fakes, provider), RecordingLimiter()
    fake.fail_next(ATTEMPTS - 1, kind)
    result = await _call(provider, fakes, settings, client, limiter)
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
    fake, limiter = _fake(fakes, provider), RecordingLimiter()
    fake.fail_next(ATTEMPTS, kind)
    with pytest.raises(TransientProviderError) as caught:
        await _call(provider, fakes, settings, client, limiter)
    assert str(caught.value).startswith(words)
    assert str(caught.value).endswith(f"(gave up after {ATTEMPTS} attempts)")
    assert len(fake.requests) == ATTEMPTS
    assert len(limiter.penalties) == (ATTEMPTS if kind == "rate_limit" else 0)
    if kind != "slow":
        assert fakes.bill_for(QUERY) == 0.0
    assert_no_secret(caught.value, *keys(fakes))


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
    fake = _fake(fakes, provider)
    if api_key is not None:
        settings = Settings.from_env({**fakes.env(), f"{provider.upper()}_API_KEY": api_key})
    if fault is not None:
        fake.fail_next(1, fault)
    with pytest.raises(PermanentProviderError) as caught:
        await _call(provider, fakes, settings, client, RecordingLimiter())
    assert str(caught.value).startswith(words)
    assert len(fake.requests) == 1
    assert fakes.total_billed() == 0.0
    assert_no_secret(caught.value, *keys(fakes), "wrong-key")


# -- answers the fakes do not give: provider echoes, Retry-After, 451, transport text ----------

KEY = "secret_0123456789abcdef"


def _mock_settings() -> Settings:
    return Settings(google_places_api_key=KEY, hunter_api_key=KEY, neverbounce_api_key=KEY)


async def test_secrets_echoed_by_providers_or_httpx_are_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/check"):
            return httpx.Response(200, json={"status": "auth_failure",
                                             "message": f"Invalid API key '{KEY}'"})  # fmt: skip
        raise httpx.ConnectError(f"cannot reach {request.url}?api_key={KEY}", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        settings = _mock_settings()
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


async def test_retry_after_is_honoured_and_long_waits_go_back_to_the_queue() -> None:
    answers = iter(["0.02", "120"])

    def handler(request: httpx.Request) -> httpx.Response:
        status = {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}
        return httpx.Response(429, json=status, headers={"Retry-After": next(answers)})

    limiter = RecordingLimiter()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        places = GooglePlaces(http, _mock_settings(), limiter, retry_policy=FAST)
        with pytest.raises(TransientProviderError) as caught:
            await places.search("cafe", "Paris", 5)
    # 0.02 s: waited in-process; 120 s: longer than max_wait_s, left to JetStream redelivery.
    assert limiter.penalties == [0.02, 120.0]
    assert caught.value.retry_after == 120.0
    assert "after 2 attempts" in str(caught.value)


async def test_hunter_451_is_no_result_and_free() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        errors = [{"id": "unavailable_for_legal_reasons", "code": 451, "details": "erased"}]
        return httpx.Response(451, json={"errors": errors})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        found = await Hunter(http, _mock_settings(), RecordingLimiter()).find_email("a.com", "")
    assert (found.email, found.confidence, found.charges) == ("", 0, [])


async def test_make_client_uses_the_provider_timeout(settings: Settings) -> None:
    async with make_client(settings) as http:
        assert http.timeout.read == settings.provider_timeout_s
        assert not http.follow_redirects
