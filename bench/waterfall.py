"""The email waterfall against Hunter alone: cost per verified email and verified emails.

A fixed campaign set (:data:`CAMPAIGNS`: every place of each text query that has a website,
as a campaign with ``verify_emails`` would enrich it) runs twice on fresh fake providers
with fake business websites on loopback (tests/fakes, ``FakeProviders(websites=True)``):
once with EMAIL_WATERFALL=hunter, once with the default order (website, pattern,
hunter). Each lead goes through the enrichment worker's own waterfall
(services/enrichment/waterfall.py) with the real Hunter and NeverBounce adapters over
HTTP, the real website reader and MX_RESOLVER=none (every domain taken to receive mail,
the waterfall's most expensive case); no cache. Cost is what the fakes billed for
enrichment (discovery's cost is the same in both runs and left out), and it is checked
equal to what the leads booked by step.

``cost_per_verified_email_ratio`` is the waterfall's cost per verified (``valid``) email
over Hunter alone's; the issue's target is at most 0.6 with at least as many verified
emails. The world's odds (tests/fakes/world.py) are what the ratio rests on: ~45% of sites
publish an address, a fifth of contact pages are closed to robots, ~30% of domains have a
working info@ besides Hunter's generic addresses, 12% accept all addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

from prospect.v1 import work_pb2
from services.common.allowance import Allowance
from services.common.cache import EnrichmentCache
from services.common.money import usd_to_micros
from services.common.providers.http import make_client
from services.common.providers.hunter import Hunter
from services.common.providers.neverbounce import NeverBounce
from services.common.settings import Settings
from services.enrichment.patterns import AnyMx
from services.enrichment.waterfall import Waterfall
from services.enrichment.website import WebsiteFetcher
from tests.fakes import FakeProviders

CAMPAIGNS = tuple(
    f"{kind} in {city} {n}"
    for n, (kind, city) in enumerate(
        [("bakery", "Springfield"), ("coffee", "Portland"), ("dentist", "Austin"),
         ("plumber", "Seattle"), ("restaurant", "Chicago"), ("bakery", "Salem"),
         ("coffee", "Tacoma"), ("dentist", "Dallas")]
    )
)  # fmt: skip
PLACES_PER_CAMPAIGN = 20
HUNTER_ONLY, WATERFALL = "hunter", "website,pattern,hunter"


class _Unlimited:
    async def acquire(self) -> None:
        return None

    async def penalize(self, seconds: float) -> None:
        return None


@dataclass(frozen=True)
class Run:
    steps: str
    leads: int
    verified: int  # leads whose email verified valid
    cost_micros: int  # what the fakes billed
    by_source: dict[str, int]

    @property
    def per_verified_micros(self) -> float:
        return self.cost_micros / self.verified if self.verified else float("inf")


@dataclass(frozen=True)
class WaterfallResult:
    hunter_only: Run
    waterfall: Run

    @property
    def ratio(self) -> float:
        return self.waterfall.per_verified_micros / self.hunter_only.per_verified_micros


async def _run(steps: str) -> Run:
    with FakeProviders(places_per_query=PLACES_PER_CAMPAIGN, websites=True) as fakes:
        settings = Settings.from_env({**fakes.env(), "EMAIL_WATERFALL": steps})
        client = make_client(settings)
        website = WebsiteFetcher(settings)
        waterfall = Waterfall(
            settings.waterfall_steps, settings.role_locals,
            website=website, mx=AnyMx(),
            finder=Hunter(client, settings, _Unlimited()),
            verifier=NeverBounce(client, settings, _Unlimited()),
            cache=EnrichmentCache(None, 0),
        )  # fmt: skip
        leads = verified = booked = 0
        by_source: dict[str, int] = {}
        try:
            for query in CAMPAIGNS:
                for place in fakes.world.places_for(query):
                    if not place.get("websiteUri"):
                        continue
                    task = work_pb2.EnrichmentTask(
                        lead_id=f"lead{leads}", verify_emails=True,
                        place=work_pb2.Place(
                            website=place["websiteUri"], name=place["displayName"]["text"]
                        ),
                    )  # fmt: skip
                    unlimited = Allowance(None, "", 0)  # type: ignore[arg-type]
                    result = await waterfall.enrich(task, unlimited, [], lambda: False)
                    leads += 1
                    verified += result.email_status == "valid"
                    booked += sum(result.cost_by_step_micros.values())
                    source = result.email_source or "none"
                    by_source[source] = by_source.get(source, 0) + 1
        finally:
            await website.aclose()
            await client.aclose()
        billed = usd_to_micros(fakes.total_billed())
        if billed != booked:
            raise AssertionError(f"{steps}: the fakes billed {billed}, the leads booked {booked}")
        return Run(steps, leads, verified, billed, by_source)


async def run_waterfall() -> WaterfallResult:
    return WaterfallResult(await _run(HUNTER_ONLY), await _run(WATERFALL))
