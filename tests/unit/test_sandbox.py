import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from services.common.domains import domain_of
from services.common.errors import PermanentProviderError
from services.common.providers import (
    Charge,
    PlaceDetails,
    Providers,
    SandboxEmailFinder,
    SandboxEmailVerifier,
    SandboxPlaces,
    sandbox_providers,
)
from services.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(sandbox_latency_ms=0)
OTHER_TYPES = ("store", "lodging", "finance", "travel_agency", "car_rental", "storage")
ADDRESS = re.compile(r"^\d+ [\w ]+, Seattle, WA 98\d{3}$")
PHONE = re.compile(r"^\(206\) 555-01\d\d$")
WEBSITE = re.compile(r"^https://[a-z0-9]+\.com$")


async def _all_details(business_type: str, location: str) -> list[PlaceDetails]:
    places = SandboxPlaces(SETTINGS)
    page = await places.search(business_type, location, 1000)
    return [(await places.details(p.place_id)).details for p in page.places]


async def _sample() -> list[tuple[str, PlaceDetails]]:
    """(business type slug, details) of every place of a dozen searches."""
    sample: list[tuple[str, PlaceDetails]] = []
    for business_type in ("coffee shop", "dentist", "plumber", "pet groomer"):
        for location in ("Seattle, WA", "Austin, TX", "Boston"):
            details = await _all_details(business_type, location)
            sample += [(business_type.replace(" ", "_"), d) for d in details]
    return sample


async def test_search_is_deterministic_across_instances_and_input_spelling() -> None:
    first = await SandboxPlaces(SETTINGS).search("coffee shop", "Seattle, WA", 50)
    second = await SandboxPlaces(Settings(sandbox_latency_ms=0)).search(
        "  Coffee   SHOP ", "seattle,  wa", 50
    )
    assert first.places == second.places
    other = await SandboxPlaces(SETTINGS).search("coffee shop", "Portland, OR", 50)
    assert {p.place_id for p in other.places}.isdisjoint(p.place_id for p in first.places)


async def test_search_size_is_60_to_100_percent_of_max_places_and_honours_limit() -> None:
    settings = Settings(sandbox_latency_ms=0, sandbox_max_places=20)
    places = SandboxPlaces(settings)
    counts = set()
    for location in ("Seattle, WA", "Austin, TX", "Denver, CO", "Miami, FL", "Boston, MA"):
        full = await places.search("bakery", location, 1000)
        assert 12 <= len(full.places) <= 20
        counts.add(len(full.places))
        limited = await places.search("bakery", location, 5)
        assert limited.places == full.places[:5]
    assert len(counts) > 1  # the size depends on the search
    assert (await places.search("bakery", "Seattle, WA", 0)).places == []
    one = SandboxPlaces(Settings(sandbox_latency_ms=0, sandbox_max_places=1))
    assert len((await one.search("bakery", "Seattle, WA", 10)).places) == 1


async def test_place_ids_are_unique_stable_strings() -> None:
    page = await SandboxPlaces(SETTINGS).search("coffee shop", "Seattle, WA", 50)
    ids = [p.place_id for p in page.places]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"sbx_[0-9a-f]+", place_id) for place_id in ids)
    assert len({p.name for p in page.places}) == len(ids)


async def test_details_are_derived_from_the_id_alone() -> None:
    page = await SandboxPlaces(SETTINGS).search("coffee shop", "Seattle, WA", 50)
    for summary in page.places:
        # A fresh instance with other settings stands in for another process.
        fresh = SandboxPlaces(Settings(sandbox_latency_ms=0, sandbox_max_places=3))
        details = (await fresh.details(summary.place_id)).details
        again = (await SandboxPlaces(SETTINGS).details(summary.place_id)).details
        assert details == again
        assert (details.place_id, details.name, details.address, details.types) == (
            summary.place_id,
            summary.name,
            summary.address,
            summary.types,
        )


@pytest.mark.parametrize("place_id", ["", "abc", "sbx_", "sbx_zz", "sbx_00", "sbx_" + b"x".hex()])
async def test_details_of_an_unknown_id_is_a_permanent_error(place_id: str) -> None:
    with pytest.raises(PermanentProviderError):
        await SandboxPlaces(SETTINGS).details(place_id)


async def test_data_looks_real_for_the_business_type_and_location() -> None:
    details = await _all_details("coffee shop", "Seattle, WA")
    assert all(any(word in d.name for word in ("Coffee", "Cafe", "Espresso")) for d in details)
    for d in details:
        if d.address_complete:
            assert ADDRESS.match(d.address), d.address
        if d.phone:
            assert PHONE.match(d.phone), d.phone
        if d.website:
            assert WEBSITE.match(d.website), d.website
            assert domain_of(d.website) == re.sub(r"[^a-z0-9]", "", d.name.lower()) + ".com"
    generic = await _all_details("pet groomers", "nowhere town")
    assert all("Pet Groomer" in d.name for d in generic)
    assert all("Nowhere Town" in d.address for d in generic)
    assert all(d.types[0] in ("pet_groomer", *OTHER_TYPES) for d in generic)


async def test_a_larger_sample_has_the_gaps_real_data_has() -> None:
    typed_sample = await _sample()
    sample = [d for _, d in typed_sample]
    n = len(sample)
    assert n >= 150
    no_website = sum(not d.website for d in sample)
    no_phone = sum(not d.phone for d in sample)
    incomplete = sum(not d.address_complete for d in sample)
    unrated = [d for d in sample if d.rating == 0]
    assert 0.08 * n < no_website < 0.35 * n
    assert 0.05 * n < no_phone < 0.30 * n
    assert 0 < incomplete < 0.25 * n
    assert unrated and all(d.review_count == 0 for d in unrated)
    rated = [d for d in sample if d.rating]
    assert all(3.0 <= d.rating <= 5.0 and 0 <= d.review_count <= 2000 for d in rated)
    statuses = Counter(d.business_status for d in sample)
    assert set(statuses) == {"OPERATIONAL", "CLOSED_TEMPORARILY", "CLOSED_PERMANENTLY"}
    assert statuses["OPERATIONAL"] > 0.75 * n
    mismatched = sum(slug not in d.types for slug, d in typed_sample)
    assert 0 < mismatched < 0.3 * n


async def test_find_email_is_deterministic_and_sometimes_finds_nothing() -> None:
    finder = SandboxEmailFinder(SETTINGS)
    domains = [f"business{i}.com" for i in range(200)]
    results = [await finder.find_email(domain, "Some Co") for domain in domains]
    again = [await SandboxEmailFinder(SETTINGS).find_email(d.upper(), "") for d in domains]
    assert results == again
    found = [r for r in results if r.email]
    assert 0.6 * len(domains) < len(found) < 0.9 * len(domains)
    for domain, result in zip(domains, results, strict=True):
        if result.email:
            local, _, host = result.email.partition("@")
            assert host == domain and local.isalpha()
            assert 40 <= result.confidence <= 99
            assert result.charges == [
                Charge("sandbox", "email_search", SETTINGS.sandbox_cost_email_search)
            ]
        else:
            assert result.confidence == 0 and result.charges == []
    locals_ = {r.email.partition("@")[0] for r in found}
    assert {"info", "hello"} <= locals_ and len(locals_) > 2


async def test_find_email_with_no_domain_is_free() -> None:
    result = await SandboxEmailFinder(SETTINGS).find_email("", "Blue Door Coffee")
    assert (result.email, result.confidence, result.charges) == ("", 0, [])


async def test_verify_is_deterministic_varied_and_always_charged() -> None:
    verifier = SandboxEmailVerifier(SETTINGS)
    emails = [f"maria@business{i}.com" for i in range(300)]
    results = [await verifier.verify(email) for email in emails]
    assert results == [await SandboxEmailVerifier(SETTINGS).verify(e.upper()) for e in emails]
    statuses = Counter(r.status for r in results)
    assert set(statuses) == {"valid", "invalid", "catchall", "unknown", "disposable"}
    assert statuses["valid"] > 0.5 * len(emails)
    charge = Charge("sandbox", "verify", SETTINGS.sandbox_cost_verify)
    assert all(r.charges == [charge] for r in results)
    malformed = await verifier.verify("not-an-email")
    assert (malformed.status, malformed.charges) == ("invalid", [charge])


async def test_charges_follow_settings() -> None:
    settings = Settings(
        sandbox_latency_ms=0, sandbox_cost_text_search=1.5, sandbox_cost_place_details=0.25
    )
    places = SandboxPlaces(settings)
    page = await places.search("coffee shop", "Seattle, WA", 3)
    assert page.charges == [Charge("sandbox", "text_search", 1.5)]
    details = await places.details(page.places[0].place_id)
    assert details.charges == [Charge("sandbox", "place_details", 0.25)]


async def test_simulated_latency_still_answers() -> None:
    settings = Settings(sandbox_latency_ms=1)
    page = await SandboxPlaces(settings).search("coffee shop", "Seattle, WA", 2)
    assert len(page.places) == 2
    assert (await SandboxEmailVerifier(settings).verify("info@example.com")).status


def test_sandbox_providers_serves_everything_from_the_sandbox() -> None:
    providers = sandbox_providers(SETTINGS)
    assert isinstance(providers, Providers)
    assert isinstance(providers.places, SandboxPlaces)
    assert providers.names() == {
        "places": "sandbox",
        "email_finder": "sandbox",
        "email_verifier": "sandbox",
    }
    assert providers.sandbox


def test_another_process_returns_the_same_details_for_an_id() -> None:
    """Seeds never come from hash(): a process with another hash seed agrees."""
    summary = asyncio.run(SandboxPlaces(SETTINGS).search("dentist", "Boston, MA", 1)).places[0]
    code = (
        "import asyncio, sys\n"
        "from services.common.providers import SandboxPlaces\n"
        "from services.common.settings import Settings\n"
        "places = SandboxPlaces(Settings(sandbox_latency_ms=0))\n"
        "print(repr(asyncio.run(places.details(sys.argv[1])).details))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, summary.place_id],
        capture_output=True, text=True, check=True, env=env, cwd=ROOT,
    )  # fmt: skip
    local = asyncio.run(SandboxPlaces(SETTINGS).details(summary.place_id)).details
    assert out.stdout.strip() == repr(local)


async def test_the_waterfall_steps_are_simulated_from_each_domains_mailbox() -> None:
    from services.common.providers.sandbox import SandboxMx, SandboxWebsite, mailbox

    website, mx = SandboxWebsite(SETTINGS), SandboxMx(SETTINGS)
    verifier = SandboxEmailVerifier(SETTINGS)
    domains = [f"business{i}.com" for i in range(200)]
    published = [await website.emails(f"https://{d}/", d) for d in domains]
    assert published == [await website.emails(f"https://{d}/", d) for d in domains]
    assert 0.2 < sum(1 for p in published if p) / len(domains) < 0.5
    assert all(
        e.partition("@")[0] in mailbox(d)
        for d, p in zip(domains, published, strict=True)
        for e in p
    )
    assert 0.7 < sum([await mx.accepts_mail(d) for d in domains]) / len(domains) < 0.95
    # A role address the domain does not have bounces; one it has verifies as any other.
    for domain in domains[:50]:
        status = (await verifier.verify(f"contact@{domain}")).status
        assert (status == "invalid") or "contact" in mailbox(domain)
