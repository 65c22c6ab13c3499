"""The fake Hunter and NeverBounce over real HTTP."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.fakes import (
    HUNTER_CREDIT_USD,
    NEVERBOUNCE_CHECK_USD,
    FakeProviders,
)
from tests.integration.fake_servers.calls import (
    QUERY,
    check,
    domain_search,
    domains_with_emails,
)

# -- Hunter --------------------------------------------------------------------------------


def test_hunter_domain_search_bills_per_ten_emails(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    domain, empty = domains_with_emails(fakes)
    response = domain_search(fakes, http, domain="www." + domain)
    assert response.status_code == 200
    body = response.json()
    assert body["data"]["domain"] == domain
    assert len(body["data"]["emails"]) == fakes.world.expected_email_count(domain)
    assert body["meta"]["results"] == fakes.world.expected_email_count(domain)
    assert body["meta"]["limit"] == 10 and body["meta"]["offset"] == 0
    email = body["data"]["emails"][0]
    assert {"value", "type", "confidence", "verification", "sources"} <= set(email)
    assert email["type"] in ("personal", "generic") and 0 <= email["confidence"] <= 100
    assert fakes.hunter.bill_for(QUERY) == HUNTER_CREDIT_USD  # 1-10 emails: one credit
    none = domain_search(fakes, http, domain=empty)
    assert none.status_code == 200 and none.json()["data"]["emails"] == []
    unknown = domain_search(fakes, http, domain="never-heard-of.com")
    assert unknown.json()["data"]["emails"] == []
    assert fakes.hunter.calls("domain_search") == 3 and len(fakes.hunter.billed) == 1


def test_hunter_auth_and_params(fakes: FakeProviders, http: httpx.Client) -> None:
    domain, _ = domains_with_emails(fakes)
    url = fakes.hunter.base_url + "/v2/domain-search"
    assert (
        http.get(
            url, params={"domain": domain}, headers={"X-API-KEY": fakes.hunter.api_key}
        ).status_code
        == 200
    )
    bearer = {"Authorization": f"Bearer {fakes.hunter.api_key}"}
    assert http.get(url, params={"domain": domain}, headers=bearer).status_code == 200
    bad = http.get(url, params={"domain": domain, "api_key": "wrong"})
    assert bad.status_code == 401 and bad.json()["errors"][0]["id"] == "authentication_failed"
    assert http.get(url, params={"domain": domain}).status_code == 401
    missing = domain_search(fakes, http)
    assert missing.status_code == 400 and missing.json()["errors"][0]["id"] == "wrong_params"
    page = domain_search(fakes, http, domain=domain, limit=1, offset=1).json()
    assert len(page["data"]["emails"]) == min(1, fakes.world.expected_email_count(domain) - 1)


def test_hunter_email_finder_bills_only_found_addresses(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    person = next(
        (d, e) for d in fakes.world.domains_for(QUERY) for e in fakes.world.emails_for(d)
        if e["type"] == "personal"
    )  # fmt: skip
    domain, email = person
    url = fakes.hunter.base_url + "/v2/email-finder"
    params = {"api_key": fakes.hunter.api_key, "domain": domain}
    found = http.get(
        url, params={**params, "first_name": email["first_name"], "last_name": email["last_name"]}
    )
    assert found.status_code == 200
    assert found.json()["data"]["email"] == email["value"]
    assert found.json()["data"]["score"] == email["confidence"]
    nobody = http.get(url, params={**params, "full_name": "Nobody Atall"})
    assert nobody.status_code == 200 and nobody.json()["data"]["email"] is None
    assert fakes.hunter.bill_for(QUERY) == HUNTER_CREDIT_USD
    assert http.get(url, params=params).status_code == 400


def test_hunter_bills_ceil_of_emails_over_ten(http: httpx.Client) -> None:
    with FakeProviders(places_per_query=40, seed=9) as fakes:
        domains = fakes.world.domains_for(QUERY)
        for domain in domains:
            domain_search(fakes, http, domain=domain, limit=3)
        expected = sum(math.ceil(min(3, fakes.world.expected_email_count(d)) / 10) for d in domains)
        assert fakes.hunter.bill_for(QUERY) == pytest.approx(
            expected * HUNTER_CREDIT_USD, abs=1e-12
        )


# -- NeverBounce ---------------------------------------------------------------------------


def test_neverbounce_results_and_duplicates(fakes: FakeProviders, http: httpx.Client) -> None:
    domain, _ = domains_with_emails(fakes)
    email = fakes.world.emails_for(domain)[0]["value"]
    first, second = check(fakes, http, email).json(), check(fakes, http, email).json()
    assert first["status"] == second["status"] == "success"
    assert first["result"] == second["result"] == fakes.world.neverbounce_result(email)
    assert {"flags", "suggested_correction", "execution_time"} <= set(first)
    assert fakes.neverbounce.bill_for(QUERY) == pytest.approx(2 * NEVERBOUNCE_CHECK_USD)
    unknown = check(fakes, http, "stranger@elsewhere.org").json()
    assert unknown["result"] == fakes.world.neverbounce_result("stranger@elsewhere.org")
    assert fakes.neverbounce.bill_for("") == NEVERBOUNCE_CHECK_USD
    url = fakes.neverbounce.base_url + "/v4.2/single/check"
    form = http.post(
        url, data={"key": fakes.neverbounce.api_key, "email": email, "address_info": "1"}
    )
    assert form.json()["address_info"]["host"] == domain
    as_json = http.post(
        url, json={"key": fakes.neverbounce.api_key, "email": email, "credits_info": 1}
    )
    assert as_json.json()["credits_info"]["paid_credits_used"] == 1
    assert fakes.neverbounce.calls("single_check") == 5


def test_neverbounce_errors_are_http_200(fakes: FakeProviders, http: httpx.Client) -> None:
    url = fakes.neverbounce.base_url + "/v4/single/check"
    wrong = http.get(url, params={"key": "wrong", "email": "a@b.com"})
    assert wrong.status_code == 200 and wrong.json()["status"] == "auth_failure"
    assert "wrong" not in wrong.text
    no_key = http.get(url, params={"email": "a@b.com"})
    assert no_key.json()["status"] == "general_failure"
    no_email = http.get(url, params={"key": fakes.neverbounce.api_key})
    assert no_email.status_code == 200 and no_email.json()["status"] == "general_failure"
    fakes.neverbounce.fail_next(1, "temp_unavail")
    assert check(fakes, http, "a@b.com").json()["status"] == "temp_unavail"
    assert fakes.neverbounce.billed == []
