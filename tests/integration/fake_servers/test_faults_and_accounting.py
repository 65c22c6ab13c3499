"""Rate limits, injected faults and the bills of the fakes, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.fakes import (
    HUNTER_CREDIT_USD,
    NEVERBOUNCE_CHECK_USD,
    TEXT_SEARCH_ENTERPRISE_USD,
    TEXT_SEARCH_PRO_USD,
    FakeHunter,
    FakeNeverBounce,
    FakeProviders,
    FakeWorld,
)
from tests.integration.fake_servers.calls import (
    QUERY,
    check,
    domain_search,
    domains_with_emails,
    search,
)

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
