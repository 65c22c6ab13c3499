"""The email waterfall (services/enrichment/waterfall.py) on the fake providers and the
fake business websites: which step finds each email, Hunter asked only for the leads the
cheaper steps missed, every step's cost equal to what the fakes billed; the MX check's DNS
messages; and the jobs service's bound on what one enrichment task may spend."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from prospect.v1 import work_pb2
from services.common.allowance import Allowance
from services.common.cache import EnrichmentCache
from services.common.money import usd_to_micros
from services.common.plan import VERIFICATIONS_MAX
from services.common.providers.http import make_client
from services.common.providers.hunter import Hunter
from services.common.providers.neverbounce import NeverBounce
from services.common.settings import Settings
from services.enrichment.patterns import AnyMx, has_mx, mx_query
from services.enrichment.waterfall import Waterfall
from services.enrichment.website import WebsiteFetcher
from services.jobs.dispatched import PriceTable
from tests.fakes import FakeProviders
from tests.fakes.world import normalize_domain

QUERIES = [f"bakery in Springfield {n}" for n in range(3)]


class _NoLimit:
    async def acquire(self) -> None:
        return None

    async def penalize(self, seconds: float) -> None:
        return None


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=25, websites=True) as running:
        yield running


async def waterfall(fakes: FakeProviders, steps: str) -> AsyncIterator[Waterfall]:
    settings = Settings.from_env({**fakes.env(), "EMAIL_WATERFALL": steps})
    client = make_client(settings)
    yield Waterfall(
        settings.waterfall_steps, settings.role_locals,
        website=WebsiteFetcher(settings), mx=AnyMx(),
        finder=Hunter(client, settings, _NoLimit()),
        verifier=NeverBounce(client, settings, _NoLimit()),
        cache=EnrichmentCache(None, 0),
    )  # fmt: skip
    await client.aclose()


async def enrich_all(w: Waterfall, fakes: FakeProviders) -> list[work_pb2.EnrichmentResult]:
    out = []
    for query in QUERIES:
        for place in fakes.world.places_for(query):
            if place.get("websiteUri"):
                p = work_pb2.Place(website=place["websiteUri"], name=place["displayName"]["text"])
                task = work_pb2.EnrichmentTask(lead_id="l", verify_emails=True, place=p)
                out.append(await w.enrich(task, Allowance(None, "k", 0), [], lambda: False))  # type: ignore[arg-type]
    return out


async def test_each_step_finds_emails_and_hunter_is_asked_only_for_the_misses(
    fakes: FakeProviders,
) -> None:
    fakes.reset()
    fakes.websites.reset()  # type: ignore[union-attr]
    async for w in waterfall(fakes, "website,pattern,hunter"):
        results = await enrich_all(w, fakes)
    sources = Counter(r.email_source for r in results)
    assert sources["website"] and sources["pattern"] and sources["hunter"]
    # Hunter searched exactly the domains the website and the role addresses left valid-less.
    searched = {normalize_domain(r.query["domain"]) for r in fakes.hunter.requests}
    missed = [r for r in results if r.email_status != "valid" or r.email_source == "hunter"]
    assert len(searched) == len(fakes.hunter.requests) == len(missed)
    assert all(r.email_source == "hunter" or r.email_status != "valid" for r in missed)
    # What each lead says its steps cost is what the fakes billed.
    booked = sum(sum(r.cost_by_step_micros.values()) for r in results)
    assert booked == usd_to_micros(fakes.total_billed())
    assert all(r.cost_by_step_micros.get("website", 0) % 8000 == 0 for r in results)
    # The most a lead may cost: a search and 3 website, 3 role and 1 Hunter verifications.
    s = Settings()
    most = usd_to_micros(s.price_hunter_domain_search + 7 * s.price_neverbounce_check)
    assert {r.lead_price_micros for r in results} == {most}


async def test_hunter_alone_is_enrichment_before_the_waterfall(fakes: FakeProviders) -> None:
    fakes.reset()
    fakes.websites.reset()  # type: ignore[union-attr]
    async for w in waterfall(fakes, "hunter"):
        results = await enrich_all(w, fakes)
    assert {r.email_source for r in results} <= {"hunter", ""}
    assert fakes.websites.requests == []  # type: ignore[union-attr]
    assert len(fakes.hunter.requests) == len(results)
    assert fakes.neverbounce.calls("single_check") == sum(1 for r in results if r.email)


def test_mx_answers_are_read() -> None:
    query = mx_query("example.com", 0x1234)
    assert query[:2] == b"\x12\x34" and query.endswith(b"\x07example\x03com\x00\x00\x0f\x00\x01")
    question = query[12:]
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    mx = b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 300, 9) + b"\x00\x0a\x04mail\xc0\x0c"
    assert has_mx(header + question + mx, 0x1234)
    null_mx = b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 300, 3) + b"\x00\x00\x00"
    assert not has_mx(header + question + null_mx, 0x1234)
    nxdomain = struct.pack("!HHHHHH", 0x1234, 0x8183, 1, 0, 0, 0) + question
    assert not has_mx(nxdomain, 0x1234)
    with pytest.raises(ValueError):
        has_mx(header + question + mx, 0x4321)  # not the answer to this query


def test_one_enrichment_task_may_spend_a_search_and_the_waterfalls_verifications() -> None:
    table = PriceTable.from_settings(Settings())
    assert (
        table.per_delivery("enrichment")
        == table.prices["email_search"] + VERIFICATIONS_MAX * (table.prices["verify"])
    )
