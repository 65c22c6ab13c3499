"""The deterministic businesses, emails and verification results the fake providers serve.

Each text query is a *job key*: tests give every campaign its own query (for instance
"bakery in Springfield 7"), and every place, website domain and email address the fakes
hand out belongs to exactly one query, so each fake's bill can be attributed to a job
(:meth:`FakeWorld.job_of_place`, :meth:`FakeWorld.job_of_domain`,
:meth:`FakeWorld.job_of_email`).

Places are Google Places API (New) ``Place`` resources in wire format (camelCase, absent
fields omitted), emails are Hunter v2 domain-search entries, results are NeverBounce v4
single-check results. Everything derives from SHA-256 of (seed, query, index), never from
:func:`hash`, so two worlds with the same seed are identical in any process. A query's
places are generated on first use and kept, under a lock.

The data has the gaps real data has: ~20% of places have no website, ~15% no phone, some
no street number or postal code, some no rating; ~25% of domains have no email; a few
businesses are closed; most addresses verify ``valid`` but every NeverBounce result occurs.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import random
import re
import threading
from typing import Any

_PREFIXES = (
    "Blue Door", "Ridgeline", "Cedar", "Golden Hour", "Harbor", "Northside", "Evergreen",
    "Little Fox", "Copper Kettle", "Stone Bridge", "Maple", "Summit", "Red Barn", "Juniper",
    "Iron Horse", "Silver Lake", "Bright Star", "Pioneer", "Wildflower", "Riverbend", "Union",
    "Old Town", "Fern", "Highland", "Sparrow", "Granite", "Bluebird", "Lantern",
)  # fmt: skip
# (query words, name suffixes, types (primary first), display name of the primary type)
_CATEGORIES: tuple[tuple[frozenset[str], tuple[str, ...], tuple[str, ...], str], ...] = (
    (frozenset({"coffee", "cafe", "espresso"}), ("Coffee", "Coffee House", "Espresso Bar"),
     ("cafe", "coffee_shop", "food", "point_of_interest", "establishment"), "Cafe"),
    (frozenset({"bakery", "bakeries", "pastry", "bread"}), ("Bakery", "Bakehouse", "Bread Co."),
     ("bakery", "food", "point_of_interest", "store", "establishment"), "Bakery"),
    (frozenset({"restaurant", "restaurants", "diner", "bistro"}), ("Kitchen", "Bistro", "Grill"),
     ("restaurant", "food", "point_of_interest", "establishment"), "Restaurant"),
    (frozenset({"dentist", "dentists", "dental"}), ("Dental", "Family Dentistry", "Smiles"),
     ("dentist", "health", "point_of_interest", "establishment"), "Dentist"),
    (frozenset({"plumber", "plumbers", "plumbing"}), ("Plumbing", "Plumbing & Heating"),
     ("plumber", "point_of_interest", "establishment"), "Plumber"),
)  # fmt: skip
_FIRST = ("Maria", "James", "Aisha", "Chen", "Olivia", "Mateo", "Priya", "Noah", "Sofia", "Liam")
_LAST = ("Garcia", "Smith", "Okafor", "Wong", "Johnson", "Rossi", "Patel", "Kim", "Novak", "Brown")
_POSITIONS = (
    ("Owner", "executive", "executive"), ("General Manager", "senior", "management"),
    ("Marketing Manager", "senior", "marketing"), ("Sales Associate", "junior", "sales"),
    ("Office Manager", "senior", "operations"),
)  # fmt: skip
_GENERIC = ("info", "hello", "contact", "office", "sales")
_STREETS = (("Main Street", "Main St"), ("Oak Avenue", "Oak Ave"), ("Pine Street", "Pine St"),
            ("Lakeview Drive", "Lakeview Dr"), ("2nd Avenue", "2nd Ave"))  # fmt: skip
_STATES = (
    ("Washington", "WA", "206", 47.61, -122.33), ("Oregon", "OR", "503", 45.52, -122.68),
    ("Illinois", "IL", "217", 39.78, -89.65), ("Texas", "TX", "512", 30.27, -97.74),
)  # fmt: skip
_NB_RESULTS = (("valid", 78), ("invalid", 9), ("disposable", 5), ("unknown", 8))


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:8], "big"))


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def normalize_domain(domain: str) -> str:
    host = domain.strip().lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def nb_result_for_unknown(email: str, seed: object = 0) -> str:
    """The fixed NeverBounce result of an address the world does not know."""
    if "@" not in email or "." not in email.rpartition("@")[2]:
        return "invalid"
    return _weighted(_rng("nb", seed, email.strip().lower()), (*_NB_RESULTS, ("catchall", 10)))


class FakeWorld:
    """Deterministic fake businesses per text query; see the module docstring."""

    def __init__(
        self,
        places_per_query: int = 25,
        seed: int | str = 0,
        *,
        every_domain_has_emails: bool = False,
    ) -> None:
        """``every_domain_has_emails``: no domain is left without an address (otherwise ~25%
        are), so every Hunter domain search is billed and its price is known in advance."""
        # Set (by FakeProviders(websites=True)) to the fake websites' port before the first
        # place is made: domains are then "<name>-<hex>.localhost", websites
        # http://[www.]<domain>:<port>/ served by tests.fakes.websites, and each domain has
        # a site (site_of) and role mailboxes.
        self.website_port = 0
        self._sites: dict[str, dict[str, Any]] = {}  # domain -> site (see site_of)
        self.places_per_query = places_per_query
        self.seed = seed
        self.every_domain_has_emails = every_domain_has_emails
        self._lock = threading.Lock()
        self._places: dict[str, list[dict[str, Any]]] = {}  # query -> places
        self._place_index: dict[str, tuple[str, dict[str, Any]]] = {}  # id -> (query, place)
        self._domains: dict[str, tuple[str, dict[str, Any]]] = {}  # domain -> (query, info)
        self._emails: dict[str, tuple[str, str]] = {}  # email -> (query, NeverBounce result)

    # -- lookups ---------------------------------------------------------------------------

    def places_for(self, query: str) -> list[dict[str, Any]]:
        """Every place of ``query`` (the full resource, all fields), in search order."""
        with self._lock:
            return copy.deepcopy(self._ensure(query))

    def place(self, place_id: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._place_index.get(place_id)
            return copy.deepcopy(hit[1]) if hit else None

    def job_of_place(self, place_id: str) -> str:
        with self._lock:
            hit = self._place_index.get(place_id)
            return hit[0] if hit else ""

    def domains_for(self, query: str) -> list[str]:
        """The website domains of ``query``'s places (those that have a website)."""
        with self._lock:
            self._ensure(query)
            return [d for d, (q, _) in self._domains.items() if q == query]

    def domain_info(self, domain: str) -> dict[str, Any] | None:
        """Hunter's view of ``domain``: organization, pattern, accept_all, emails, address."""
        with self._lock:
            hit = self._domains.get(normalize_domain(domain))
            return copy.deepcopy(hit[1]) if hit else None

    def domain_of_company(self, company: str) -> str:
        wanted = company.strip().lower()
        with self._lock:
            for domain, (_, info) in self._domains.items():
                if info["organization"].lower() == wanted:
                    return domain
        return ""

    def job_of_domain(self, domain: str) -> str:
        with self._lock:
            hit = self._domains.get(normalize_domain(domain))
            return hit[0] if hit else ""

    def emails_for(self, domain: str) -> list[dict[str, Any]]:
        """Hunter domain-search entries for ``domain`` ([] for an unknown domain)."""
        info = self.domain_info(domain)
        return info["emails"] if info else []

    def expected_email_count(self, domain: str) -> int:
        return len(self.emails_for(domain))

    def job_of_email(self, email: str) -> str:
        """The job of a known address, or of its domain (a guessed role address)."""
        with self._lock:
            hit = self._emails.get(email.strip().lower())
        return hit[0] if hit else self.job_of_domain(email.rpartition("@")[2])

    def neverbounce_result(self, email: str) -> str:
        """valid, invalid, disposable, catchall or unknown; fixed per address."""
        with self._lock:
            hit = self._emails.get(email.strip().lower())
        if hit:
            return hit[1]
        info = self.domain_info(email.rpartition("@")[2]) if self.website_port else None
        if info is not None:  # no such mailbox at a domain the world made
            return "catchall" if info["accept_all"] else "invalid"
        return nb_result_for_unknown(email, self.seed)

    def site_of(self, domain: str) -> dict[str, Any] | None:
        """A domain's fake website: ``email`` (the address it publishes, "" none), ``where``
        ("home" or "contact"), ``how`` ("mailto" or "text"), ``robots_blocks_contact``,
        ``contact_path`` and ``foreign`` (an address at another domain it also shows)."""
        with self._lock:
            site = self._sites.get(normalize_domain(domain))
            return copy.deepcopy(site) if site else None

    # -- generation ------------------------------------------------------------------------

    def _ensure(self, query: str) -> list[dict[str, Any]]:
        places = self._places.get(query)
        if places is None:
            places = [self._make_place(query, i) for i in range(self.places_per_query)]
            self._places[query] = places
        return places

    def _make_place(self, query: str, index: int) -> dict[str, Any]:
        rng = _rng("place", self.seed, query, index)
        what, _, where = query.lower().partition(" in ")
        words = set(re.findall(r"[a-z]+", what))
        category = next((c for c in _CATEGORIES if c[0] & words), None)
        slug = "_".join(re.findall(r"[a-z]+", what)) or "store"
        if category is not None:
            _, suffixes, types, type_name = category
        else:
            title = what.strip().title() or "Store"
            suffixes, types, type_name = (
                (title,),
                (slug, "point_of_interest", "establishment"),
                title,
            )
        city = " ".join(w for w in where.split() if w.isalpha()).title() or "Springfield"
        state, state_code, area, lat0, lng0 = _STATES[_rng("state", self.seed, query).randrange(4)]
        name = f"{rng.choice(_PREFIXES)} {rng.choice(suffixes)}"
        raw_id = base64.urlsafe_b64encode(_digest("id", self.seed, query, index)).decode()
        place_id = "ChIJ" + raw_id.rstrip("=")[:23]

        street_long, street_short = rng.choice(_STREETS)
        number = str(rng.randint(1, 9899))
        postal = f"{rng.randint(10000, 99899):05d}"
        has_number, has_postal = rng.random() >= 0.12, rng.random() >= 0.10
        components = [({"street_number"}, number, number)] if has_number else []
        components += [
            ({"route"}, street_long, street_short),
            ({"locality", "political"}, city, city),
            ({"administrative_area_level_1", "political"}, state, state_code),
            ({"country", "political"}, "United States", "US"),
        ]
        if has_postal:
            components.append(({"postal_code"}, postal, postal))
        street = f"{number} {street_short}" if has_number else street_short
        region = f"{state_code} {postal}" if has_postal else state_code
        lat, lng = (
            round(lat0 + rng.uniform(-0.05, 0.05), 7),
            round(lng0 + rng.uniform(-0.05, 0.05), 7),
        )
        place: dict[str, Any] = {
            "name": f"places/{place_id}",
            "id": place_id,
            "types": list(types),
            "formattedAddress": f"{street}, {city}, {region}, USA",
            "shortFormattedAddress": f"{street}, {city}",
            "addressComponents": [
                {"longText": lt, "shortText": st, "types": sorted(ts), "languageCode": "en"}
                for ts, lt, st in components
            ],
            "location": {"latitude": lat, "longitude": lng},
            "viewport": {
                "low": {"latitude": lat - 0.0013, "longitude": lng - 0.0013},
                "high": {"latitude": lat + 0.0013, "longitude": lng + 0.0013},
            },
            "googleMapsUri": f"https://maps.google.com/?cid={int.from_bytes(_digest(raw_id)[:7])}",
            "utcOffsetMinutes": -420 if state_code in ("WA", "OR") else -300,
            "businessStatus": _weighted(
                rng, (("OPERATIONAL", 90), ("CLOSED_TEMPORARILY", 6), ("CLOSED_PERMANENTLY", 4))
            ),
            "displayName": {"text": name, "languageCode": "en"},
            "primaryType": types[0],
            "primaryTypeDisplayName": {"text": type_name, "languageCode": "en-US"},
            "regularOpeningHours": {
                "openNow": rng.random() < 0.6,
                "weekdayDescriptions": [f"{d}: 8:00 AM - 6:00 PM" for d in ("Monday", "Tuesday")],
            },
        }
        if rng.random() >= 0.15:
            line = f"555-01{rng.randint(0, 99):02d}"
            place["nationalPhoneNumber"] = f"({area}) {line}"
            place["internationalPhoneNumber"] = f"+1 {area}-{line}"
        if rng.random() >= 0.15:
            place["rating"] = round(rng.uniform(2.5, 5.0), 1)
            place["userRatingCount"] = rng.randint(1, 2400)
            place["reviews"] = [self._review(place_id, rng)]
        if "food" in types:
            place["priceLevel"] = rng.choice(("PRICE_LEVEL_INEXPENSIVE", "PRICE_LEVEL_MODERATE"))
            place["takeout"], place["dineIn"] = True, rng.random() < 0.7
        if rng.random() >= 0.20:
            label = re.sub(r"[^a-z0-9]+", "", name.lower())
            tld = "localhost" if self.website_port else "com"
            domain = f"{label}-{_digest('dom', self.seed, query, index).hex()[:6]}.{tld}"
            host = domain if rng.random() < 0.3 else f"www.{domain}"
            path = rng.choice(("/", "", "/home"))
            scheme = "http" if rng.random() < 0.1 else "https"
            if self.website_port:
                scheme, host = "http", f"{host}:{self.website_port}"
            place["websiteUri"] = f"{scheme}://{host}{path}"
            self._add_domain(query, domain, name, place)
            if self.website_port:
                self._add_site(query, domain)
        self._place_index[place_id] = (query, place)
        return place

    @staticmethod
    def _review(place_id: str, rng: random.Random) -> dict[str, Any]:
        stars = rng.randint(3, 5)
        text = {"text": "Friendly staff and quick service.", "languageCode": "en"}
        return {
            "name": f"places/{place_id}/reviews/r{rng.randint(1000, 9999)}",
            "relativePublishTimeDescription": "a month ago",
            "rating": stars,
            "text": text,
            "originalText": text,
            "authorAttribution": {"displayName": rng.choice(_FIRST), "uri": "", "photoUri": ""},
            "publishTime": "2026-10-01T12:00:00Z",
        }

    def _add_site(self, query: str, domain: str) -> None:
        """The domain's website and role mailboxes: ~45% of sites publish an address
        (mostly one Hunter also knows, else a role address of their own), on the home page
        or the contact page, as a mailto: link or as text; a fifth of contact pages are
        closed to robots; ~30% of domains have a working info@ whatever they publish."""
        rng = _rng("site", self.seed, domain)
        known = [e["value"] for e in self._domains[domain][1]["emails"]]
        email = ""
        if rng.random() < 0.45:
            if known and rng.random() < 0.7:
                email = known[0]
            else:
                email = f"{rng.choice(('hello', 'office', 'contact'))}@{domain}"
                self._emails.setdefault(email, (query, _weighted(rng, _NB_RESULTS)))
        if rng.random() < 0.30:
            self._emails.setdefault(f"info@{domain}", (query, "valid"))
        self._sites[domain] = {
            "email": email,
            "where": rng.choice(("home", "contact")),
            "how": rng.choice(("mailto", "text")),
            "robots_blocks_contact": rng.random() < 0.2,
            "contact_path": rng.choice(("/contact", "/contact-us", "/about/contact")),
            "foreign": f"webmaster@{rng.choice(('gmail.com', 'wix.com'))}",
        }

    def _add_domain(self, query: str, domain: str, org: str, place: dict[str, Any]) -> None:
        rng = _rng("emails", self.seed, domain)
        accept_all = rng.random() < 0.12
        pattern = rng.choice(("{first}.{last}", "{first}", "{f}{last}"))
        empty = rng.random() < 0.25 and not self.every_domain_has_emails
        count = 0 if empty else rng.randint(1, 4)
        emails: list[dict[str, Any]] = []
        used: set[str] = set()
        for k in range(count):
            generic = k == 0 and rng.random() < 0.6
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            if generic:
                local = rng.choice(_GENERIC)
            else:
                local = pattern.format(first=first.lower(), last=last.lower(), f=first[0].lower())
            if local in used:
                continue
            used.add(local)
            value = f"{local}@{domain}"
            result = "catchall" if accept_all else _weighted(rng, _NB_RESULTS)
            self._emails[value] = (query, result)
            position = None if generic else rng.choice(_POSITIONS)
            hunter_status = {"valid": "valid", "catchall": "accept_all"}.get(result)
            emails.append({
                "value": value,
                "type": "generic" if generic else "personal",
                "confidence": rng.randint(50, 95) if generic else rng.randint(70, 99),
                "first_name": None if generic else first,
                "last_name": None if generic else last,
                "position": position[0] if position else None,
                "seniority": position[1] if position else None,
                "department": position[2] if position else None,
                "linkedin": None if generic else f"https://www.linkedin.com/in/{local}-{k}",
                "twitter": None,
                "phone_number": None,
                "verification": {
                    "date": f"2026-10-{rng.randint(1, 28):02d}" if hunter_status else None,
                    "status": hunter_status,
                },
                "sources": [{
                    "domain": domain,
                    "uri": f"http://{domain}/contact",
                    "extracted_on": "2025-06-12",
                    "last_seen_on": "2026-10-20",
                    "still_on_page": True,
                }],
            })  # fmt: skip
        address = {c["types"][0]: c["longText"] for c in place["addressComponents"]}
        self._domains[domain] = (query, {
            "domain": domain,
            "organization": org,
            "pattern": pattern if any(e["type"] == "personal" for e in emails) else None,
            "accept_all": accept_all,
            "emails": emails,
            "city": address.get("locality"),
            "state": address.get("administrative_area_level_1"),
            "postal_code": address.get("postal_code"),
            "street": " ".join(filter(None, (address.get("street_number"), address.get("route")))),
        })  # fmt: skip
