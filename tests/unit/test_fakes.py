"""Tests of the fake provider servers themselves (tests/fakes), over real HTTP with httpx."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import (
    DETAILS_ENTERPRISE_USD,
    DETAILS_ESSENTIALS_USD,
    HUNTER_CREDIT_USD,
    NEVERBOUNCE_CHECK_USD,
    TEXT_SEARCH_ENTERPRISE_USD,
    TEXT_SEARCH_PRO_USD,
    FakeHunter,
    FakeNeverBounce,
    FakeProviders,
    FakeWorld,
)

QUERY = "bakery in Springfield 7"
SEARCH = "/v1/places:searchText"


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


def search(
    fakes: FakeProviders, http: httpx.Client, mask: str | None, **body: object
) -> httpx.Response:
    headers = {"X-Goog-Api-Key": fakes.google.api_key}
    if mask is not None:
        headers["X-Goog-FieldMask"] = mask
    payload = {"textQuery": QUERY, **body}
    return http.post(fakes.google.base_url + SEARCH, json=payload, headers=headers)


def details(fakes: FakeProviders, http: httpx.Client, place_id: str, mask: str) -> httpx.Response:
    headers = {"X-Goog-Api-Key": fakes.google.api_key, "X-Goog-FieldMask": mask}
    return http.get(f"{fakes.google.base_url}/v1/places/{place_id}", headers=headers)


def domain_search(fakes: FakeProviders, http: httpx.Client, **params: object) -> httpx.Response:
    query = {"api_key": fakes.hunter.api_key, **params}
    return http.get(fakes.hunter.base_url + "/v2/domain-search", params=query)  # type: ignore[arg-type]


def check(fakes: FakeProviders, http: httpx.Client, email: str) -> httpx.Response:
    params = {"key": fakes.neverbounce.api_key, "email": email}
    return http.get(fakes.neverbounce.base_url + "/v4/single/check", params=params)


def domains_with_emails(fakes: FakeProviders, query: str = QUERY) -> tuple[str, str]:
    """One domain of ``query`` with emails and one without."""
    domains = fakes.world.domains_for(query)
    with_emails = [d for d in domains if fakes.world.expected_email_count(d) > 0]
    without = [d for d in domains if fakes.world.expected_email_count(d) == 0]
    return with_emails[0], without[0]


# -- the world -----------------------------------------------------------------------------


def test_the_world_is_deterministic_and_has_realistic_gaps() -> None:
    a, b = FakeWorld(places_per_query=60, seed=3), FakeWorld(places_per_query=60, seed=3)
    places = a.places_for(QUERY)
    assert places == b.places_for(QUERY)
    assert all(p["id"].startswith("ChIJ") and len(p["id"]) >= 24 for p in places)
    assert len({p["id"] for p in places}) == 60
    assert any("websiteUri" not in p for p in places) and any("websiteUri" in p for p in places)
    assert any("nationalPhoneNumber" not in p for p in places)
    assert any("rating" not in p for p in places)
    kinds = [{t for c in p["addressComponents"] for t in c["types"]} for p in places]
    assert any("street_number" not in k for k in kinds)
    assert any("postal_code" not in k for k in kinds)
    assert a.places_for("florist in Salem 2") != places
    domains = a.domains_for(QUERY)
    assert not set(domains) & set(a.domains_for("florist in Salem 2"))
    assert a.job_of_domain(domains[0]) == QUERY and a.job_of_domain("www." + domains[0]) == QUERY
    assert a.job_of_place(places[0]["id"]) == QUERY and a.job_of_place("ChIJnope") == ""
    counts = [a.expected_email_count(d) for d in domains]
    assert 0 in counts and max(counts) <= 4
    email = next(e["value"] for d in domains for e in a.emails_for(d))
    assert a.job_of_email(email) == QUERY
    assert a.neverbounce_result(email) in ("valid", "invalid", "disposable", "catchall", "unknown")
    assert a.neverbounce_result("x@unknown.example") == b.neverbounce_result("x@unknown.example")


def test_env_gives_unique_keys_and_base_urls(fakes: FakeProviders) -> None:
    env = fakes.env()
    assert env["GOOGLE_PLACES_API_KEY"].startswith("gk-test-")
    assert (
        len({env["GOOGLE_PLACES_API_KEY"], env["HUNTER_API_KEY"], env["NEVERBOUNCE_API_KEY"]}) == 3
    )
    for name in ("GOOGLE_PLACES_BASE_URL", "HUNTER_BASE_URL", "NEVERBOUNCE_BASE_URL"):
        assert env[name].startswith("http://127.0.0.1:") and not env[name].endswith("/")
    other = FakeProviders()
    assert other.google.api_key != fakes.google.api_key


# -- Google Places -------------------------------------------------------------------------


def test_google_requires_a_field_mask(fakes: FakeProviders, http: httpx.Client) -> None:
    response = search(fakes, http, None)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    assert "FieldMask is a required parameter" in error["message"]
    assert fakes.google.operations == []


def test_google_returns_only_masked_fields(fakes: FakeProviders, http: httpx.Client) -> None:
    response = search(fakes, http, "places.id,places.displayName.text")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"places"}  # no nextPageToken: it was not in the mask
    assert len(body["places"]) == 20
    for place in body["places"]:
        assert set(place) == {"id", "displayName"} and set(place["displayName"]) == {"text"}
    assert fakes.google.bill_for(QUERY) == TEXT_SEARCH_PRO_USD


def test_google_unknown_mask_paths_are_rejected(fakes: FakeProviders, http: httpx.Client) -> None:
    response = search(fakes, http, "places.id,places.emails")
    assert response.status_code == 400 and "places.emails" in response.json()["error"]["message"]
    place_id = fakes.world.places_for(QUERY)[0]["id"]
    response = details(fakes, http, place_id, "places.displayName")  # details have no prefix
    assert response.status_code == 400
    assert fakes.google.operations == []


def test_google_pagination_stops_at_sixty(http: httpx.Client) -> None:
    with FakeProviders(places_per_query=75) as fakes:
        seen: list[str] = []
        token = None
        for _ in range(5):
            extra: dict[str, object] = {"pageToken": token} if token else {}
            body = search(fakes, http, "places.id,nextPageToken", **extra).json()
            seen += [p["id"] for p in body["places"]]
            token = body.get("nextPageToken")
            if not token:
                break
        assert len(seen) == 60 == len(set(seen))
        assert seen == [p["id"] for p in fakes.world.places_for(QUERY)[:60]]
        assert fakes.google.calls("text_search") == 3
        assert fakes.google.bill_for(QUERY) == 0.0  # ids and nextPageToken: IDs Only, free


def test_google_page_tokens_need_the_same_parameters(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    first = search(fakes, http, "places.id,nextPageToken", pageSize=10).json()
    assert len(first["places"]) == 10
    token = first["nextPageToken"]
    bad = search(fakes, http, "places.id", pageToken=token, textQuery="other query")
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    good = search(fakes, http, "places.id,nextPageToken", pageToken=token, pageSize=25)
    assert good.status_code == 200 and len(good.json()["places"]) == 15  # 25 -> 20, 25 in all
    assert "nextPageToken" not in good.json()
    assert search(fakes, http, "places.id", pageSize=-1).status_code == 400
    assert search(fakes, http, "places.id", pageToken="garbage!").status_code == 400
    assert search(fakes, http, "places.id", colour="red").status_code == 400


def test_google_bills_the_highest_sku_of_the_mask(fakes: FakeProviders, http: httpx.Client) -> None:
    assert search(fakes, http, "places.id,places.displayName,places.types").status_code == 200
    assert fakes.google.bill_for(QUERY) == TEXT_SEARCH_PRO_USD
    assert search(fakes, http, "places.displayName,places.websiteUri").status_code == 200
    total = TEXT_SEARCH_PRO_USD + TEXT_SEARCH_ENTERPRISE_USD
    assert fakes.google.bill_for(QUERY) == pytest.approx(total, abs=1e-12)
    assert [b.price_usd for b in fakes.google.billed] == [0.032, 0.035]
    assert search(fakes, http, "places.id").status_code == 200  # IDs Only: free
    assert fakes.google.calls("text_search") == 3 and len(fakes.google.billed) == 2


def test_google_place_details(fakes: FakeProviders, http: httpx.Client) -> None:
    place = fakes.world.places_for(QUERY)[3]
    response = details(fakes, http, place["id"], "formattedAddress,addressComponents,location")
    assert response.status_code == 200
    assert response.json() == {
        k: place[k] for k in ("formattedAddress", "addressComponents", "location")
    }
    assert fakes.google.bill_for(QUERY) == DETAILS_ESSENTIALS_USD
    response = details(fakes, http, place["id"], "id,displayName,rating,websiteUri")
    assert set(response.json()) <= {"id", "displayName", "rating", "websiteUri"}
    assert fakes.google.billed[-1].price_usd == DETAILS_ENTERPRISE_USD
    assert fakes.google.billed[-1].job_key == QUERY
    by_param = http.get(
        f"{fakes.google.base_url}/v1/places/{place['id']}",
        params={"key": fakes.google.api_key, "fields": "id"},
    )
    assert by_param.json() == {"id": place["id"]}
    missing = details(fakes, http, "ChIJ" + "z" * 23, "id")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    assert fakes.google.calls("place_details") == 3


def test_google_key_errors(fakes: FakeProviders, http: httpx.Client) -> None:
    url = fakes.google.base_url + SEARCH
    wrong = http.post(url, json={"textQuery": QUERY}, headers={"X-Goog-Api-Key": "nope"})
    assert wrong.status_code == 400
    error = wrong.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "API_KEY_INVALID"
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    missing = http.post(url, json={"textQuery": QUERY}, headers={"X-Goog-FieldMask": "places.id"})
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    by_param = http.post(
        url, params={"key": fakes.google.api_key}, json={"textQuery": QUERY},
        headers={"X-Goog-FieldMask": "places.id"},
    )  # fmt: skip
    assert by_param.status_code == 200
    assert http.get(fakes.google.base_url + "/v1/nowhere").status_code == 404


# -- rate limits and faults ----------------------------------------------------------------


def test_google_rate_limit_answers_429_and_never_bills(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    fakes.google.set_rate_limit(rps=2, burst=3)
    codes = [search(fakes, http, "places.displayName").status_code for _ in range(8)]
    assert codes.count(200) >= 3 and codes.count(429) >= 3
    assert fakes.google.rate_limited == codes.count(429)
    assert fakes.google.calls("text_search") == codes.count(200)
    assert fakes.google.bill_for(QUERY) == pytest.approx(codes.count(200) * TEXT_SEARCH_PRO_USD)
    limited = search(fakes, http, "places.id")
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["details"][0]["reason"] == "RATE_LIMIT_EXCEEDED"
    fakes.google.clear_rate_limit()
    assert search(fakes, http, "places.id").status_code == 200


def test_hunter_rate_limit_is_a_403(fakes: FakeProviders, http: httpx.Client) -> None:
    domain, _ = domains_with_emails(fakes)
    fakes.hunter.set_rate_limit(rps=1, burst=2)
    answers = [domain_search(fakes, http, domain=domain) for _ in range(6)]
    limited = [a for a in answers if a.status_code == 403]
    assert len(limited) >= 3 and fakes.hunter.rate_limited == len(limited)
    assert limited[0].json()["errors"][0]["code"] == 403
    assert len(fakes.hunter.billed) == len(answers) - len(limited)


def test_neverbounce_throttle_is_a_200(fakes: FakeProviders, http: httpx.Client) -> None:
    fakes.neverbounce.set_rate_limit(rps=1, burst=1)
    answers = [check(fakes, http, "someone@example.com") for _ in range(4)]
    assert all(a.status_code == 200 for a in answers)
    statuses = [a.json()["status"] for a in answers]
    assert statuses[0] == "success" and "throttle_triggered" in statuses
    throttled = next(a for a in answers if a.json()["status"] == "throttle_triggered")
    assert "retry-after" not in throttled.headers and "message" in throttled.json()
    assert len(fakes.neverbounce.billed) == statuses.count("success")


@pytest.mark.parametrize(
    ("kind", "google", "hunter", "neverbounce"),
    [
        ("server_error", (503, "UNAVAILABLE"), 503, (503, "temp_unavail")),
        ("bad_key", (400, "INVALID_ARGUMENT"), 401, (200, "auth_failure")),
        ("credits_exhausted", (429, "RESOURCE_EXHAUSTED"), 429, (200, "general_failure")),
        ("rate_limit", (429, "RESOURCE_EXHAUSTED"), 403, (200, "throttle_triggered")),
    ],
)
def test_injected_faults_use_each_providers_envelope(
    fakes: FakeProviders,
    http: httpx.Client,
    kind: str,
    google: tuple[int, str],
    hunter: int,
    neverbounce: tuple[int, str],
) -> None:
    domain, _ = domains_with_emails(fakes)
    for fake in fakes.fakes:
        fake.fail_next(1, kind)
    g = search(fakes, http, "places.displayName")
    assert (g.status_code, g.json()["error"]["status"]) == google
    h = domain_search(fakes, http, domain=domain)
    assert h.status_code == hunter and h.json()["errors"][0]["code"] == hunter
    n = check(fakes, http, "a@b.com")
    assert (n.status_code, n.json()["status"]) == neverbounce
    assert fakes.total_billed() == 0.0
    assert search(fakes, http, "places.displayName").status_code == 200  # one request only
    assert domain_search(fakes, http, domain=domain).status_code == 200
    assert check(fakes, http, "a@b.com").json()["status"] == "success"


def test_malformed_and_slow_faults(fakes: FakeProviders, http: httpx.Client) -> None:
    fakes.hunter.fail_next(1, "malformed")
    domain, _ = domains_with_emails(fakes)
    response = domain_search(fakes, http, domain=domain)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert fakes.hunter.billed == []
    fakes.neverbounce.slow_s = 0.3
    fakes.neverbounce.fail_next(1, "slow")
    started = time.monotonic()
    assert check(fakes, http, "a@b.com").json()["status"] == "success"
    assert time.monotonic() - started >= 0.3
    with pytest.raises(ValueError):
        fakes.google.fail_next(1, "explode")


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


# -- accounting ----------------------------------------------------------------------------


def test_bills_are_attributed_per_job(fakes: FakeProviders, http: httpx.Client) -> None:
    other = "dentist in Portland 3"
    search(fakes, http, "places.displayName")
    search(fakes, http, "places.websiteUri", textQuery=other)
    domain, _ = domains_with_emails(fakes, other)
    domain_search(fakes, http, domain=domain)
    check(fakes, http, fakes.world.emails_for(domain)[0]["value"])
    assert fakes.bill_for(QUERY) == TEXT_SEARCH_PRO_USD
    expected_other = TEXT_SEARCH_ENTERPRISE_USD + HUNTER_CREDIT_USD + NEVERBOUNCE_CHECK_USD
    assert fakes.bill_for(other) == pytest.approx(expected_other, abs=1e-12)
    assert fakes.total_billed() == pytest.approx(fakes.bill_for(QUERY) + fakes.bill_for(other))
    fakes.reset()
    assert fakes.total_billed() == 0.0 and fakes.google.requests == []


def test_requests_are_recorded_and_windowed(fakes: FakeProviders, http: httpx.Client) -> None:
    for _ in range(5):
        check(fakes, http, "a@b.com")
    record = fakes.neverbounce.requests[0]
    assert record.method == "GET" and record.path == "/v4/single/check"
    assert record.query["email"] == "a@b.com" and "host" in record.headers
    assert fakes.neverbounce.max_requests_in_window(10.0) == 5
    fakes.hunter.reset()
    for _ in range(3):
        domain_search(fakes, http, domain="a.com")
        time.sleep(0.25)
    assert fakes.hunter.max_requests_in_window(0.1) == 1
    assert fakes.hunter.max_requests_in_window(10.0) == 3


def test_concurrent_requests_are_all_counted(fakes: FakeProviders) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                for _ in range(5):
                    assert check(fakes, client, "c@d.com").status_code == 200
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(fakes.neverbounce.requests) == 40 == fakes.neverbounce.calls("single_check")
    assert fakes.neverbounce.bill_for("") == pytest.approx(40 * NEVERBOUNCE_CHECK_USD)


def test_a_stopped_fake_refuses_connections(http: httpx.Client) -> None:
    world = FakeWorld()
    with FakeHunter(world) as hunter, FakeNeverBounce(world) as neverbounce:
        url = hunter.base_url
        assert neverbounce.base_url != url
    with pytest.raises(httpx.ConnectError):
        http.get(url + "/v2/domain-search")


def test_a_worker_process_can_call_the_fakes(fakes: FakeProviders) -> None:
    env = fakes.env()
    script = (
        "import json, os, urllib.parse, urllib.request\n"
        "key = os.environ['NEVERBOUNCE_API_KEY']\n"
        "q = urllib.parse.urlencode({'key': key, 'email': 'w@x.com'})\n"
        "url = os.environ['NEVERBOUNCE_BASE_URL'] + '/v4/single/check?' + q\n"
        "print(json.load(urllib.request.urlopen(url))['status'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "success"
    assert fakes.neverbounce.calls("single_check") == 1
