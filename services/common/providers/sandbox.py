"""Sandbox providers: deterministic offline data with simulated latency and cost.

The embedded default for every capability whose API key is not set. Everything is derived
from SHA-256 of normalized inputs (never :func:`hash`, which is salted per process), so any
process returns the same answers:

- a search for (business type, location) returns the same places in the same order;
- a place id encodes its (business type, location, index), so :meth:`SandboxPlaces.details`
  needs nothing but the id;
- an email lookup depends only on the domain, a verification only on the address;
- the email waterfall's free steps too (:class:`SandboxWebsite`, :class:`SandboxMx`): each
  domain has a mailbox (:func:`mailbox`: the finder's address, the one its website
  publishes, some role addresses); a role address outside it verifies ``invalid``.

The data has the gaps real data has (no website, no phone, partial address, unrated, closed,
an unexpected place type, no email found, undeliverable email) so scoring and enrichment see
every branch. Charges mirror the real providers: a failed email lookup is free (like Hunter),
every verification is charged (like NeverBounce).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import time
from itertools import product

from services.common.domains import type_slug, type_words
from services.common.errors import PermanentProviderError
from services.common.providers.base import (
    Charge,
    DetailsResult,
    EmailCandidate,
    PlaceDetails,
    PlaceSummary,
    SearchPage,
    Verification,
)
from services.common.settings import Settings
from services.common.worker_metrics import provider_request

PROVIDER = "sandbox"
_ID_PREFIX = "sbx_"
_ID_SEP = "\x1f"  # cannot occur in normalized input: it is whitespace to str.split()

_PREFIXES = (
    "Blue Door", "Ridgeline", "Cedar", "Golden Hour", "Harbor", "Northside", "Evergreen",
    "Little Fox", "Copper Kettle", "Stone Bridge", "Maple", "Summit", "Red Barn", "Lighthouse",
    "Juniper", "Iron Horse", "Silver Lake", "Oak & Ash", "Bright Star", "Pioneer", "Wildflower",
    "Riverbend", "Union", "Old Town", "Fern", "Highland", "Sparrow", "Granite", "Bluebird",
    "Westside", "Lantern", "Market Street",
)  # fmt: skip
# (words that select the category, name suffixes); the first category that matches wins.
_CATEGORIES: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (frozenset({"coffee", "cafe", "espresso", "coffeehouse", "roaster"}),
     ("Coffee", "Coffee Roasters", "Coffee House", "Espresso Bar", "Cafe")),
    (frozenset({"bakery", "baker", "pastry", "bread"}),
     ("Bakery", "Bakehouse", "Bread Co.", "Pastry Shop")),
    (frozenset({"restaurant", "diner", "bistro", "eatery", "food"}),
     ("Kitchen", "Bistro", "Eatery", "Grill", "Table")),
    (frozenset({"dentist", "dental", "orthodontist", "dentistry"}),
     ("Dental", "Family Dentistry", "Dental Care", "Smiles", "Dental Studio")),
    (frozenset({"plumber", "plumbing"}),
     ("Plumbing", "Plumbing & Drain", "Plumbing Co.", "Pipe Works")),
    (frozenset({"gym", "fitness", "crossfit", "yoga"}),
     ("Fitness", "Athletic Club", "Strength Co.", "Yoga Studio")),
    (frozenset({"salon", "hair", "barber", "barbershop", "beauty", "spa"}),
     ("Salon", "Hair Studio", "Barbershop", "Beauty Bar")),
    (frozenset({"lawyer", "attorney", "law", "legal"}),
     ("Law Group", "Legal", "Law Offices", "Legal Partners")),
    (frozenset({"auto", "mechanic", "car", "garage"}),
     ("Auto Repair", "Automotive", "Auto Works", "Garage")),
    (frozenset({"florist", "flower", "floral"}),
     ("Flowers", "Floral", "Florist", "Blooms")),
    (frozenset({"realtor", "realty", "estate", "broker"}),
     ("Realty", "Real Estate", "Properties", "Homes")),
    (frozenset({"bar", "pub", "brewery", "taproom"}),
     ("Tap House", "Brewing", "Pub", "Ale House")),
)  # fmt: skip
_STREETS = (
    "Pine St", "Main St", "Oak Ave", "2nd Ave", "Broadway", "Market St", "Elm St", "Lake Rd",
    "Cedar Ln", "Park Blvd", "Madison St", "Union Ave", "Hill St", "Water St", "Jackson Blvd",
)  # fmt: skip
# Region -> (its best-known city, area code, first three digits of postal codes).
_REGIONS = {
    "WA": ("seattle", "206", "981"), "OR": ("portland", "503", "972"),
    "CA": ("san francisco", "415", "941"), "NY": ("new york", "212", "100"),
    "TX": ("austin", "512", "787"), "IL": ("chicago", "312", "606"),
    "MA": ("boston", "617", "021"), "CO": ("denver", "303", "802"),
    "FL": ("miami", "305", "331"), "GA": ("atlanta", "404", "303"),
    "AZ": ("phoenix", "602", "850"), "PA": ("philadelphia", "215", "191"),
    "MN": ("minneapolis", "612", "554"), "NC": ("charlotte", "704", "282"),
    "TN": ("nashville", "615", "372"),
}  # fmt: skip
_REGION_OF_CITY = {city: region for region, (city, _, _) in _REGIONS.items()}
_COUNTRIES = frozenset({"usa", "us", "u.s.", "u.s.a.", "united states"})
_OTHER_TYPES = ("store", "lodging", "finance", "travel_agency", "car_rental", "storage")
_FIRST_NAMES = ("maria", "james", "sarah", "david", "emily", "daniel", "olivia", "michael")


def _rng(*parts: object) -> random.Random:
    """A generator seeded by SHA-256 of ``parts``: the same in every process."""
    digest = hashlib.sha256("|".join(str(part) for part in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


class _Market:
    """Every place of one normalized (business type, location), generated on demand."""

    def __init__(self, business_type: str, location: str) -> None:
        self.business_type = _normalize(business_type)
        self.location = _normalize(location)
        self.slug = type_slug(self.business_type)
        words = type_words(self.business_type)
        suffixes = next((s for keys, s in _CATEGORIES if keys.intersection(words)), ())
        if not suffixes:
            title = " ".join(w.capitalize() for w in words) or "Local Business"
            suffixes = (title, f"{title} Co.")
        self._names = [f"{p} {s}" for p, s in product(_PREFIXES, suffixes)]
        # One shuffle per market keeps names distinct within a search.
        _rng("names", self.business_type, self.location).shuffle(self._names)
        self._city, self._region, self._area_code, self._zip3 = self._locality()

    def _locality(self) -> tuple[str, str, str, str]:
        parts = [p.strip() for p in self.location.split(",")]
        parts = [p for p in parts if p and p not in _COUNTRIES]
        city = parts[0] if parts else "springfield"
        region = re.sub(r"\s*\d{5}(-\d{4})?$", "", parts[1]) if len(parts) > 1 else ""
        rng = _rng("locality", self.location)
        # A city without a region gets its own when the sandbox knows it, else any region.
        region = region or _REGION_OF_CITY.get(city) or rng.choice(sorted(_REGIONS))
        region = region.upper() if len(region) <= 3 else region.title()
        fallback = ("", str(rng.randint(201, 989)), str(rng.randint(100, 999)))
        _, area_code, zip3 = _REGIONS.get(region, fallback)
        return city.title(), region, area_code, zip3

    def population(self, max_places: int) -> int:
        """How many places this market has: 60-100% of ``max_places``, at least one."""
        low = max(1, math.ceil(0.6 * max_places))
        return _rng("population", self.business_type, self.location).randint(low, max_places)

    def place_id(self, index: int) -> str:
        payload = _ID_SEP.join((str(index), self.business_type, self.location))
        return _ID_PREFIX + payload.encode().hex()

    def details(self, index: int) -> PlaceDetails:
        rng = _rng("place", self.business_type, self.location, index)
        lap, slot = divmod(index, len(self._names))
        name = self._names[slot] + (f" {lap + 1}" if lap else "")
        number, street = rng.randint(100, 9899), rng.choice(_STREETS)
        postal = f"{self._zip3}{rng.randrange(100):02d}"
        address_complete = rng.random() >= 0.10
        if address_complete:
            address = f"{number} {street}, {self._city}, {self._region} {postal}"
        elif rng.random() < 0.5:
            address = f"{street}, {self._city}, {self._region}"
        else:
            address = f"{number} {street}, {self._city}"
        phone = "" if rng.random() < 0.15 else f"({self._area_code}) 555-01{rng.randrange(100):02d}"
        domain = re.sub(r"[^a-z0-9]", "", name.lower())
        website = "" if rng.random() < 0.20 else f"https://{domain}.com"
        if rng.random() < 0.08:
            rating, reviews = 0.0, 0
        else:
            rating = round(rng.uniform(3.0, 5.0), 1)
            reviews = int(10 ** rng.triangular(0.0, math.log10(2000), 2.2))  # mode ~160
        roll = rng.random()
        status = (
            "OPERATIONAL" if roll < 0.88 else "CLOSED_TEMPORARILY" if roll < 0.95
            else "CLOSED_PERMANENTLY"
        )  # fmt: skip
        if self.slug and rng.random() < 0.85:
            main_type = self.slug
        else:
            main_type = rng.choice([t for t in _OTHER_TYPES if t != self.slug])
        return PlaceDetails(
            place_id=self.place_id(index),
            name=name,
            address=address,
            phone=phone,
            website=website,
            rating=rating,
            review_count=reviews,
            business_status=status,
            types=(main_type, "point_of_interest", "establishment"),
            address_complete=address_complete,
        )


def _parse_place_id(place_id: str) -> tuple[_Market, int]:
    """The market and index a sandbox place id encodes; PermanentProviderError if none."""
    try:
        if not place_id.startswith(_ID_PREFIX):
            raise ValueError(place_id)
        index, business_type, location = (
            bytes.fromhex(place_id[len(_ID_PREFIX) :]).decode().split(_ID_SEP)
        )
        market = _Market(business_type, location)
        if not index.isdigit() or market.place_id(int(index)) != place_id:
            raise ValueError(place_id)  # not canonical: not an id search() hands out
    except ValueError:
        raise PermanentProviderError(PROVIDER, f"unknown place id {place_id!r}") from None
    return market, int(index)


class _SandboxProvider:
    name: str = PROVIDER
    billed = False  # simulated calls and costs: nobody bills them

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def _simulate_latency(self, operation: str) -> None:
        """The simulated request of ``operation`` (counted in the workers' metrics)."""
        started = time.monotonic()
        if self._settings.sandbox_latency_ms > 0:
            await asyncio.sleep(self._settings.sandbox_latency_ms / 1000)
        provider_request(PROVIDER, operation, "ok", time.monotonic() - started)

    @staticmethod
    def _charge(operation: str, cost_usd: float) -> list[Charge]:
        return [Charge(provider=PROVIDER, operation=operation, cost_usd=cost_usd)]

    def price(self, operation: str) -> float:
        """The configured sandbox cost of one ``operation`` call (0.0 for unknown ones)."""
        s = self._settings
        return {
            "text_search": s.sandbox_cost_text_search,
            "place_details": s.sandbox_cost_place_details,
            "email_search": s.sandbox_cost_email_search,
            "verify": s.sandbox_cost_verify,
        }.get(operation, 0.0)


class SandboxPlaces(_SandboxProvider):
    """:class:`~services.common.providers.base.PlaceSearch` over generated businesses."""

    page_size = 60  # one search call returns every place asked for

    def details_price(self, place_id: str) -> float:
        return self._settings.sandbox_cost_place_details

    async def search(self, business_type: str, location: str, limit: int) -> SearchPage:
        """The first ``limit`` places of the market; one ``text_search`` charge."""
        await self._simulate_latency("text_search")
        market = _Market(business_type, location)
        count = min(max(limit, 0), market.population(self._settings.sandbox_max_places))
        places = []
        for index in range(count):
            details = market.details(index)
            places.append(
                PlaceSummary(details.place_id, details.name, details.address, details.types)
            )
        charges = self._charge("text_search", self._settings.sandbox_cost_text_search)
        return SearchPage(places=places, charges=charges)

    async def details(self, place_id: str) -> DetailsResult:
        """Details derived from the id alone; one ``place_details`` charge.

        Raises :class:`PermanentProviderError` (uncharged) for an id the sandbox never
        hands out.
        """
        await self._simulate_latency("place_details")
        market, index = _parse_place_id(place_id)
        charges = self._charge("place_details", self._settings.sandbox_cost_place_details)
        return DetailsResult(details=market.details(index), charges=charges)


_ROLES = frozenset({"info", "contact", "hello", "office", "sales", "team", "admin", "mail"})


def _finder_local(domain: str) -> tuple[str, int] | None:
    """The local part and confidence of the address the finder knows at ``domain``."""
    rng = _rng("email", domain)
    if rng.random() >= 0.75:
        return None
    roll = rng.random()
    local = "info" if roll < 0.35 else "hello" if roll < 0.6 else rng.choice(_FIRST_NAMES)
    return local, rng.randint(40, 99)


def _website_local(domain: str) -> str | None:
    """The local part of the address ``domain``'s website publishes (~35% publish one)."""
    rng = _rng("website", domain)
    if rng.random() >= 0.35:
        return None
    return rng.choice(("info", "contact", "hello", "office", *_FIRST_NAMES))


def mailbox(domain: str) -> frozenset[str]:
    """The local parts that exist at ``domain``: the finder's and the website's address,
    and each of info, contact, hello with chance 0.3."""
    rng = _rng("mailbox", domain)
    found = {role for role in ("info", "contact", "hello") if rng.random() < 0.3}
    finder = _finder_local(domain)
    if finder:
        found.add(finder[0])
    website = _website_local(domain)
    if website:
        found.add(website)
    return frozenset(found)


class SandboxEmailFinder(_SandboxProvider):
    """:class:`~services.common.providers.base.EmailFinder`: ~75% of domains have an email."""

    async def find_email(self, domain: str, company: str) -> EmailCandidate:
        """An address at ``domain`` (``company`` is ignored) or "" when none is found.

        Charged ``email_search`` only when an address is found; an empty domain makes no
        call at all (no latency, no charge).
        """
        domain = domain.strip().lower()
        if not domain:
            return EmailCandidate(email="", confidence=0)
        await self._simulate_latency("email_search")
        found = _finder_local(domain)
        if found is None:
            return EmailCandidate(email="", confidence=0)
        local, confidence = found
        return EmailCandidate(
            email=f"{local}@{domain}",
            confidence=confidence,
            charges=self._charge("email_search", self._settings.sandbox_cost_email_search),
        )


class SandboxWebsite(_SandboxProvider):
    """The website step without a network: ~35% of domains publish an address."""

    async def emails(self, website: str, domain: str) -> list[str]:
        """The address ``domain``'s simulated site publishes, if any; free."""
        domain = domain.strip().lower()
        if not domain:
            return []
        await self._simulate_latency("website")
        local = _website_local(domain)
        return [f"{local}@{domain}"] if local else []


class SandboxMx(_SandboxProvider):
    """The pattern step's MX check without DNS: ~85% of domains receive mail."""

    async def accepts_mail(self, domain: str) -> bool:
        return _rng("mx", domain.strip().lower()).random() < 0.85


class SandboxEmailVerifier(_SandboxProvider):
    """:class:`~services.common.providers.base.EmailVerifier`: mostly ``valid``."""

    async def verify(self, email: str) -> Verification:
        """Status derived from the address; malformed ones are ``invalid``. Always charged."""
        await self._simulate_latency("verify")
        email = email.strip().lower()
        local, at, domain = email.rpartition("@")
        if not (local and at and "." in domain):
            status = "invalid"
        elif local in _ROLES and local not in mailbox(domain):
            status = "invalid"  # a guessed role address the domain does not have
        else:
            roll = _rng("verify", email).random()
            status = (
                "valid" if roll < 0.70 else "invalid" if roll < 0.82
                else "catchall" if roll < 0.92 else "unknown" if roll < 0.98 else "disposable"
            )  # fmt: skip
        return Verification(
            status=status, charges=self._charge("verify", self._settings.sandbox_cost_verify)
        )
