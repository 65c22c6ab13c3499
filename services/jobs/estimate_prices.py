"""The price side of an estimate: which provider serves each capability, what each of its
calls costs (the price table of settings), and what the plan makes a campaign pay for
(services/common/plan.py): a search in pages of the provider's size, details per place
where the search does not carry them, and per lead the email steps and a verification.

A lead's enrichment follows EMAIL_WATERFALL's steps in order, as the enrichment worker
does; until earlier campaigns say otherwise, each step's chances are the ``PRIOR_*``
constants below. An email search is billed only when it finds an address (Hunter and the
sandbox alike), a verification always.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.money import usd_to_micros
from services.common.plan import WEBSITE_CANDIDATES_MAX
from services.common.settings import Settings
from services.jobs.outcomes import History

GOOGLE, HUNTER, NEVERBOUNCE, SANDBOX = "google_places", "hunter", "neverbounce", "sandbox"
PLACES_PAGE = {GOOGLE: 20, SANDBOX: 60}  # places one billed search call returns at most
PRIOR_WEBSITE = 0.8  # places with a website
PRIOR_SITE_EMAIL = 0.35  # websites that publish an address
PRIOR_MX = 0.85  # domains that receive mail
PRIOR_ROLE = 0.3  # a role address (info@, contact@...) that exists at such a domain
PRIOR_EMAIL = 0.75  # domains the email search finds an address at
PRIOR_VALID = 0.7  # addresses found that a verifier says are valid


@dataclass(frozen=True, slots=True)
class PlacesPrices:
    provider: str
    page_size: int
    search_micros: int  # one page
    details_micros: int  # one place found (0: the search carries its details)
    prior_found: tuple[int, int]  # places a search has, before any campaign says


@dataclass(frozen=True, slots=True)
class LeadPrices:
    """Per provider, what one lead's enrichment costs: at most, and by the priors its mean
    and its standard deviation from lead to lead."""

    most: Mapping[str, int]
    prior: Mapping[str, float]
    spread: Mapping[str, float]
    email_share: float  # prior share of leads with an email found
    valid_share: float  # prior share of leads with an email verified valid
    steps: str  # the steps in words


@dataclass(frozen=True, slots=True)
class PriceModel:
    names: Mapping[str, str]  # capability -> provider, as in JobMetrics.providers
    places: PlacesPrices
    leads: LeadPrices

    @property
    def providers(self) -> list[str]:
        """Every provider that may be paid, each once."""
        return list(dict.fromkeys([self.places.provider, *self.leads.most]))

    @property
    def words(self) -> str:
        return ", ".join(self.providers) + " list prices"


def current_providers(settings: Settings, history: History) -> dict[str, str]:
    """Capability -> provider: this service's keys say when it has any (the local stack);
    else the latest campaign's (the workers hold the keys); else the sandbox."""
    keys = (settings.google_places_api_key, settings.hunter_api_key, settings.neverbounce_api_key)
    latest = history.latest
    if not any(keys) and latest is not None and latest.providers:
        return dict(latest.providers)
    return {
        "places": GOOGLE if keys[0] else SANDBOX,
        "email_finder": HUNTER if keys[1] else SANDBOX,
        "email_verifier": NEVERBOUNCE if keys[2] else SANDBOX,
    }


def _price(settings: Settings, provider: str, operation: str) -> int:
    s = settings
    table = {
        (GOOGLE, "text_search"): s.price_google_text_search,
        (GOOGLE, "place_details"): 0.0,  # carried by the search (google_places.py)
        (HUNTER, "email_search"): s.price_hunter_domain_search,
        (NEVERBOUNCE, "verify"): s.price_neverbounce_check,
        (SANDBOX, "text_search"): s.sandbox_cost_text_search,
        (SANDBOX, "place_details"): s.sandbox_cost_place_details,
        (SANDBOX, "email_search"): s.sandbox_cost_email_search,
        (SANDBOX, "verify"): s.sandbox_cost_verify,
    }
    return usd_to_micros(table.get((provider, operation), 0.0))


def _lead_outcomes(
    steps: Sequence[str],
    roles: int,
    verify: bool,
    finder: str,
    verifier: str,
    search: int,
    check: int,
) -> list[tuple[float, dict[str, int], bool, bool]]:
    """Every way one lead's email waterfall can go by the priors: (probability, cost per
    provider, an email kept, verified valid). Steps run in order until an address is
    kept: ``website`` (free; its address verified when verifying), ``pattern`` (only when
    verifying: each role address verified until one is valid, at a domain with mail),
    ``hunter`` (the email search, billed when it finds one, then its verification)."""
    done: list[tuple[float, dict[str, int], bool, bool]] = [(1 - PRIOR_WEBSITE, {}, False, False)]
    going: list[tuple[float, dict[str, int]]] = [(PRIOR_WEBSITE, {})]

    def plus(costs: dict[str, int], provider: str, micros: int) -> dict[str, int]:
        return {**costs, provider: costs.get(provider, 0) + micros}

    for step in steps:
        after: list[tuple[float, dict[str, int]]] = []
        for p, costs in going:
            if step == "website":
                after.append((p * (1 - PRIOR_SITE_EMAIL), costs))
                p_hit = p * PRIOR_SITE_EMAIL
                if not verify:
                    done.append((p_hit, costs, True, False))
                    continue
                checked = plus(costs, verifier, check)
                done.append((p_hit * PRIOR_VALID, checked, True, True))
                after.append((p_hit * (1 - PRIOR_VALID), checked))
            elif step == "pattern" and verify:
                after.append((p * (1 - PRIOR_MX), costs))
                p, tried = p * PRIOR_MX, costs
                for _ in range(roles):
                    tried = plus(tried, verifier, check)
                    done.append((p * PRIOR_ROLE, tried, True, True))
                    p *= 1 - PRIOR_ROLE
                after.append((p, tried))
            elif step == "hunter":
                after.append((p * (1 - PRIOR_EMAIL), costs))
                found = plus(costs, finder, search)
                if verify:
                    found = plus(found, verifier, check)
                done.append((p * PRIOR_EMAIL * PRIOR_VALID, found, True, verify))
                done.append((p * PRIOR_EMAIL * (1 - PRIOR_VALID), found, True, False))
            else:
                after.append((p, costs))
        going = after
    return done + [(p, costs, False, False) for p, costs in going]


def price_model(settings: Settings, names: Mapping[str, str], verify: bool) -> PriceModel:
    """The prices and plan of a campaign served by ``names`` (capability -> provider);
    ``verify``: whether it verifies the emails it finds. The lead's steps are
    EMAIL_WATERFALL's (ROLE_ADDRESSES for the pattern step)."""
    places = names.get("places", SANDBOX)
    finder = names.get("email_finder", SANDBOX)
    verifier = names.get("email_verifier", SANDBOX)
    if places == SANDBOX:
        most = settings.sandbox_max_places
        prior_found = (max(1, round(0.6 * most)), most)  # sandbox.py: 60-100% of it
    else:
        prior_found = (20, 60)
    steps = tuple(getattr(settings, "waterfall_steps", ("hunter",)))
    roles = len(getattr(settings, "role_locals", ()))
    search = _price(settings, finder, "email_search")
    check = _price(settings, verifier, "verify")
    outcomes = _lead_outcomes(steps, roles, verify, finder, verifier, search, check)
    checks = (WEBSITE_CANDIDATES_MAX * ("website" in steps) + roles * ("pattern" in steps)
              + ("hunter" in steps)) if verify else 0  # fmt: skip
    most_cost = {finder: search if "hunter" in steps else 0}
    most_cost[verifier] = most_cost.get(verifier, 0) + checks * check
    prior = {k: sum(p * c.get(k, 0) for p, c, _, _ in outcomes) for k in most_cost}
    spread = {
        k: math.sqrt(max(0.0, sum(p * c.get(k, 0) ** 2 for p, c, _, _ in outcomes) - m * m))
        for k, m in prior.items()
    }
    words = " then ".join(steps) + (" (verified)" if verify else "")
    return PriceModel(
        names=dict(names),
        places=PlacesPrices(
            places,
            PLACES_PAGE.get(places, 20),
            _price(settings, places, "text_search"),
            _price(settings, places, "place_details"),
            prior_found,
        ),
        leads=LeadPrices(
            most_cost,
            prior,
            spread,
            email_share=sum(p for p, _, kept, _ in outcomes if kept),
            valid_share=sum(p for p, _, _, valid in outcomes if valid),
            steps=words,
        ),
    )
