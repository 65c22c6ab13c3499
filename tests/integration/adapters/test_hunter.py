"""The Hunter adapter: the rule picking the best address, the search against the fake
(charged like its bill, nothing charged when nothing is found) and a 451 answer (erased
for legal reasons) as no result, free."""

from __future__ import annotations

import math

import httpx
import pytest

from services.common.providers.hunter import FoundEmail, Hunter, best_email
from services.common.settings import Settings
from tests.fakes import FakeProviders
from tests.integration.adapters.helpers import (
    FAST,
    QUERY,
    RecordingLimiter,
    assert_keys_not_in_urls,
    domains_with_emails,
    mock_settings,
)


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
    domain, empty = domains_with_emails(fakes)
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


async def test_hunter_451_is_no_result_and_free() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        errors = [{"id": "unavailable_for_legal_reasons", "code": 451, "details": "erased"}]
        return httpx.Response(451, json={"errors": errors})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        found = await Hunter(http, mock_settings(), RecordingLimiter()).find_email("a.com", "")
    assert (found.email, found.confidence, found.charges) == ("", 0, [])
