"""EstimateCampaign: what a campaign would find and cost, before any paid call is made.

The figures rest on four things, each named in the estimate's ``basis``:

- **the price table** (``PRICE_*``, ``SANDBOX_COST_*``) of the providers serving each
  capability (those of the latest campaign; before any, this service's own keys);
- **the plan** the workers follow (``services/common/plan.py``): a search for twice the
  leads kept (20 to 60 places, in pages of the provider's size), details per place where
  the search does not carry them, then per lead the email steps and a verification;
- **earlier campaigns** (:mod:`services.jobs.outcomes`): the caller's and the
  deployment's, with the same providers, for the places a search finds, the share of them
  that qualifies at this minimum score, the share that qualifies with a website (only
  those leads enter the email waterfall, and they rank first: a campaign keeping most of
  what it found keeps some without one, which cost nothing), what a lead with a website
  costs per provider and how many emails a lead verifies, and the share answered by the
  enrichment cache;
- **the cache**: a campaign for the same search within ``ENRICHMENT_CACHE_DAYS`` paid for
  its leads' domains already, so those leads cost nothing.

Rates are pooled over earlier campaigns (the caller's weigh twice the others', those with
a closer minimum score more) and blended with priors that weigh as much as
:data:`PRIOR_LEADS` leads, so a first campaign gets the priors and a long history its own
rates. The range comes from a seeded simulation of :data:`DRAWS` campaigns: the rates vary
from campaign to campaign as much as the history's did (beyond what chance alone explains)
and, at this campaign's size, lead by lead; p10, p50 and p90 are quantiles of the same
draws, per provider and in total, so each range is ordered and exact in micro-dollars.
Pure: no I/O; :class:`Estimator` reads the history and calls :func:`estimate`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prospect.v1 import jobs_pb2
from services.common.money import micros_to_usd
from services.common.plan import SEARCH_CALLS_MAX, SEARCH_MAX, SEARCH_MIN
from services.jobs.estimate_prices import PRIOR_WEBSITE, PriceModel
from services.jobs.outcomes import History, Outcome, query_key

DRAWS = 1000
PRIOR_LEADS = 20.0  # how many leads' worth of evidence the priors are
PRIOR_CAMPAIGNS = 1.0  # how many campaigns' worth the prior places are
OTHERS_WEIGHT = 0.5  # another user's campaign, against one of the caller's
SAME_QUERY_WEIGHT = 20.0  # a campaign for the same search, against any other
SCORE_SCALE = 10.0  # a campaign 10 points of minimum score away weighs 1/e as much
# Prior share of found places scoring at least a minimum score (scoring.py's weights over
# places with the usual gaps: a website 80%, a phone 85%, a complete address 80%...).
PRIOR_PASS = ((0, 1.0), (40, 0.97), (50, 0.93), (60, 0.85), (70, 0.7), (80, 0.45),
              (90, 0.15), (100, 0.02))  # fmt: skip
PRIOR_PASS_SPREAD = 0.1  # between campaigns
PRIOR_COST_SPREAD = 0.15  # a lead's cost, between campaigns, relative to its mean
PRIOR_CACHE = 0.0  # of leads, the share the cache answers (unless the same search ran)


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate pooled over earlier campaigns and a prior: its mean per unit, how much it
    varies between campaigns (``between``, a standard deviation per unit) and per unit
    (``within``), and the units of evidence behind it (``units``, prior included)."""

    mean: float
    between: float
    within: float
    units: float

    def draw(self, units: float, z_between: float, z_within: float) -> float:
        """The total over ``units`` for the given standard normal draws."""
        if units <= 0:
            return 0.0
        spread = math.hypot(self.between, self.within / math.sqrt(self.units))
        return units * (self.mean + spread * z_between) + math.sqrt(units) * self.within * z_within


def share_spread(mean: float) -> float:
    """A share's spread per unit (each unit in or out: Bernoulli)."""
    return math.sqrt(max(0.0, mean * (1 - mean)))


def pooled(
    samples: Sequence[tuple[float, float, float]],
    prior_mean: float,
    prior_between: float,
    within_at: Callable[[float], float] = share_spread,
) -> Rate:
    """The :class:`Rate` of ``samples`` (weight, total, units) blended with a prior of
    mean ``prior_mean`` weighing :data:`PRIOR_LEADS` units; ``within_at``: the spread per
    unit at a mean. The spread between campaigns is what the samples' own spread has
    beyond chance (moments), blended with ``prior_between`` while they are few."""
    units = PRIOR_LEADS + sum(w * n for w, _, n in samples)
    mean = (prior_mean * PRIOR_LEADS + sum(w * t for w, t, _ in samples)) / units
    within = within_at(mean)
    used = [(w, t / n, n) for w, t, n in samples if n > 0]
    weight = sum(w for w, _, _ in used)
    between = prior_between
    if len(used) >= 2 and weight > 0:
        observed = sum(w * (r - mean) ** 2 for w, r, _ in used) / weight
        chance = sum(w * within**2 / n for w, _, n in used) / weight
        seen = max(0.0, observed - chance)
        k = len(used)  # the prior spread fades as campaigns come in
        between = math.sqrt((2 * prior_between**2 + k * seen) / (k + 2))
    return Rate(mean, between, within, units)


def _cost_spread(prior_mean: float, prior_sd: float, most: float) -> Callable[[float], float]:
    """A lead's cost spread at a mean: the prior's, scaled as a count's (by the square root
    of the mean), or a Bernoulli one's up to ``most`` without a prior."""

    def at(mean: float) -> float:
        if prior_mean > 0:
            return prior_sd * math.sqrt(mean / prior_mean)
        return math.sqrt(max(0.0, mean * (most - mean)))

    return at


def prior_pass(min_score: int) -> float:
    """Prior share of found places scoring at least ``min_score`` (linear between points)."""
    for (x0, y0), (x1, y1) in itertools.pairwise(PRIOR_PASS):
        if x0 <= min_score <= x1:
            return y0 + (y1 - y0) * (min_score - x0) / (x1 - x0)
    return PRIOR_PASS[-1][1]


def asked_places(max_results: int) -> int:
    """Places the discovery asks the search for (services/discovery/worker.py)."""
    return min(SEARCH_MAX, max(SEARCH_MIN, 2 * max_results))


def discovery_micros(places: int, prices: PriceModel) -> int:
    """What discovery pays for a search that found ``places``: its pages and the details
    the search did not carry."""
    p = prices.places
    pages = min(SEARCH_CALLS_MAX, max(1, math.ceil(places / p.page_size)))
    return pages * p.search_micros + places * p.details_micros


def _clip(x: float, low: float, high: float) -> float:
    return min(high, max(low, x))


def _count(n: int, p: float, z: float) -> int:
    """A binomial(n, p) draw by its normal approximation (rounded, within 0..n)."""
    return round(_clip(n * p + math.sqrt(max(0.0, n * p * (1 - p))) * z, 0, n))


def _quantiles(values: list[int]) -> jobs_pb2.CostRange:
    ordered = sorted(values)
    at = [ordered[round(q * (len(ordered) - 1))] for q in (0.1, 0.5, 0.9)]
    return jobs_pb2.CostRange(p10_micros=at[0], p50_micros=at[1], p90_micros=at[2])


@dataclass(frozen=True, slots=True)
class _Weighted:
    outcome: Outcome
    weight: float
    mine: bool


def _relevant(
    history: History, config: jobs_pb2.CampaignConfig, providers: Mapping[str, str]
) -> list[_Weighted]:
    """Earlier campaigns with these providers, each weighed by whose it is, its search
    and its minimum score."""
    query = query_key(config.business_type, config.location)
    out = []
    for mine, outcomes in ((True, history.mine), (False, history.others)):
        weight = 1.0 if mine else OTHERS_WEIGHT
        for o in outcomes:
            if dict(o.providers) != dict(providers) or o.businesses_found <= 0:
                continue
            distance = abs(o.min_confidence_score - config.min_confidence_score)
            w = weight * math.exp(-distance / SCORE_SCALE)
            out.append(_Weighted(o, w * (SAME_QUERY_WEIGHT if o.query == query else 1.0), mine))
    return out


@dataclass(frozen=True, slots=True)
class _Model:
    """Everything one simulated campaign draws from."""

    asked: int
    places: list[tuple[float, int, int]]  # (weight, places found, places asked); 0: prior
    prior_places: tuple[int, int]  # a search's places, uniformly between these
    qualify: Rate
    cache: Rate
    cached_same_query: int | None  # leads the same search's recent run paid for
    sites: Rate  # of found places, those qualifying with a website
    lead_cost: dict[str, Rate]  # per provider, per lead with a website the cache does not answer
    verified: Rate  # valid emails per lead enriched
    prices: PriceModel


def _model(
    config: jobs_pb2.CampaignConfig,
    relevant: list[_Weighted],
    prices: PriceModel,
    cache_days: float,
    now: datetime,
) -> _Model:
    asked = asked_places(config.max_results)
    query = query_key(config.business_type, config.location)
    same = [r for r in relevant if r.outcome.query == query]
    found_from = same or relevant
    places = [(r.weight, r.outcome.businesses_found, asked_places(r.outcome.max_results))
              for r in found_from]  # fmt: skip
    if not same:
        places.append((PRIOR_CAMPAIGNS, 0, 0))
    # Qualification: campaigns that kept fewer than their maximum say what share passed.
    qualify = pooled(
        [(r.weight, r.outcome.qualified_leads, r.outcome.businesses_found) for r in relevant
         if r.outcome.qualified_leads < r.outcome.max_results],
        prior_pass(config.min_confidence_score),
        PRIOR_PASS_SPREAD,
    )  # fmt: skip
    cached_same_query = None
    if cache_days <= 0:
        cache = Rate(0.0, 0.0, 0.0, PRIOR_LEADS)
    else:
        fresh = now - timedelta(days=cache_days)
        recent = [r.outcome.leads_enriched for r in same if r.outcome.created_at >= fresh]
        cached_same_query = max(recent) if recent else None
        cache = pooled(
            [(r.weight, r.outcome.leads_from_cache, r.outcome.leads_enriched) for r in relevant],
            PRIOR_CACHE,
            0.0,
        )
    # Places qualifying with a website: only the leads that have one enter the waterfall,
    # and they rank first (a website scores), so a campaign keeping most of what it found
    # keeps more leads without one. A campaign says how many there were when it kept some
    # without a website, or fewer than its maximum.
    sites = pooled(
        [(r.weight, r.outcome.leads_with_website, r.outcome.businesses_found) for r in relevant
         if r.outcome.leads_without_website or r.outcome.qualified_leads < r.outcome.max_results],
        min(PRIOR_WEBSITE, prior_pass(config.min_confidence_score)),
        PRIOR_PASS_SPREAD,
    )  # fmt: skip
    like = [r for r in relevant if r.outcome.verify_emails == config.verify_emails]
    lead_cost = {}
    for provider in prices.leads.most:
        # The priors' cost per lead is over leads with and without a website.
        prior, prior_sd = (prices.leads.prior[provider] / PRIOR_WEBSITE,
                           prices.leads.spread[provider] / math.sqrt(PRIOR_WEBSITE))  # fmt: skip
        lead_cost[provider] = pooled(
            [
                (r.weight, _enrichment_micros(r.outcome, provider, prices), r.outcome.sites_paid)
                for r in like
            ],
            prior,
            PRIOR_COST_SPREAD * prior,
            _cost_spread(prior, prior_sd, prices.leads.most[provider]),
        )
    prior_valid = prices.leads.valid_share if config.verify_emails else 0.0
    verified = pooled(
        [(r.weight, r.outcome.emails_verified, r.outcome.leads_enriched) for r in like],
        prior_valid,
        0.1 * prior_valid,
    )
    return _Model(asked, places, prices.places.prior_found, qualify, cache,
                  cached_same_query, sites, lead_cost, verified, prices)  # fmt: skip


def _enrichment_micros(o: Outcome, provider: str, prices: PriceModel) -> float:
    """What ``o``'s enrichment paid ``provider``: its spend with it, less its discovery
    when the provider served both (the sandbox)."""
    spent = o.cost_by_provider.get(provider, 0)
    if provider == prices.places.provider:
        spent -= discovery_micros(o.businesses_found, prices)
    return float(max(0, spent))


def _found(model: _Model, rng: random.Random) -> int:
    """Places one simulated search finds: those of an earlier campaign (a search that
    found fewer than it asked found all there are), or of the prior."""
    weights = [w for w, _, _ in model.places]
    _, found, asked = rng.choices(model.places, weights)[0]
    low, high = model.prior_places
    there = rng.randint(low, high)
    if asked == 0:
        return min(model.asked, there)
    if found < asked:
        return min(model.asked, found)
    return min(model.asked, max(found, there))  # all it asked for: there may be more


def simulate(
    config: jobs_pb2.CampaignConfig, model: _Model, rng: random.Random
) -> tuple[list[float], list[float], list[float], dict[str, list[int]]]:
    """:data:`DRAWS` simulated campaigns: places, qualified leads, verified emails, and
    the cost per provider of each."""
    p = model.prices
    budget = config.budget_limit_micros
    found_n: list[float] = []
    kept_n: list[float] = []
    valid_n: list[float] = []
    costs: dict[str, list[int]] = {name: [] for name in p.providers}
    for _ in range(DRAWS):
        found = _found(model, rng)
        share = _clip(model.qualify.mean + model.qualify.between * rng.gauss(), 0.0, 1.0)
        kept = min(config.max_results, _count(found, share, rng.gauss()))
        valid_rate = model.verified
        enriched = kept
        if config.target_verified_emails and valid_rate.mean > 0:
            needed = math.ceil(config.target_verified_emails / max(valid_rate.mean, 0.02))
            enriched = min(kept, needed)
        if model.cached_same_query is not None:
            cached = min(enriched, model.cached_same_query)
        else:
            cached = _count(enriched, _clip(model.cache.mean, 0.0, 1.0), rng.gauss())
        # Leads are enriched by rank: those with a website first; the cache answers only
        # leads with one.
        site_share = _clip(model.sites.mean + model.sites.between * rng.gauss(), 0.0, 1.0)
        with_site = min(enriched, _count(found, site_share, rng.gauss()))
        paid = max(0, with_site - cached)
        z_between, z_within = rng.gauss(), rng.gauss()  # one lead's fortune drives every step
        spend = {name: 0.0 for name in p.providers}
        spend[p.places.provider] += discovery_micros(found, p)
        for provider, rate in model.lead_cost.items():
            most = paid * p.leads.most[provider]
            spend[provider] += _clip(rate.draw(paid, z_between, z_within), 0.0, most)
        total = sum(spend.values())
        scale = budget / total if budget and total > budget else 1.0
        for name in p.providers:
            costs[name].append(math.floor(spend[name] * scale))
        found_n.append(found)
        kept_n.append(kept)
        valid = _clip(valid_rate.draw(enriched, rng.gauss(), rng.gauss()), 0.0, enriched)
        if config.target_verified_emails:
            valid = min(valid, max(config.target_verified_emails, 0))
        valid_n.append(valid)
    return found_n, kept_n, valid_n, costs


def _seed(config: jobs_pb2.CampaignConfig, relevant: list[_Weighted]) -> int:
    key = f"{config.SerializeToString(deterministic=True).hex()}|{len(relevant)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def estimate(
    config: jobs_pb2.CampaignConfig,
    history: History,
    prices: PriceModel,
    *,
    cache_days: float,
    now: datetime,
) -> jobs_pb2.CampaignEstimate:
    """The estimate of the validated ``config`` (see the module docstring)."""
    relevant = _relevant(history, config, prices.names)
    model = _model(config, relevant, prices, cache_days, now)
    found, kept, valid, costs = simulate(config, model, random.Random(_seed(config, relevant)))
    totals = [sum(c[i] for c in costs.values()) for i in range(DRAWS)]
    return jobs_pb2.CampaignEstimate(
        expected_places=round(sum(found) / DRAWS, 2),
        expected_qualified_leads=round(sum(kept) / DRAWS, 2),
        expected_verified_emails=round(sum(valid) / DRAWS, 2),
        total=_quantiles(totals),
        by_provider={name: _quantiles(values) for name, values in costs.items()},
        basis=basis(config, relevant, model),
    )


def basis(config: jobs_pb2.CampaignConfig, relevant: list[_Weighted], model: _Model) -> str:
    """What the estimate rests on, in words."""
    p = model.prices
    pages = math.ceil(model.asked / p.places.page_size)
    parts = [
        f"the price table ({p.words})",
        f"the plan ({model.asked} places asked, at most {pages} search "
        f"page{'s' if pages > 1 else ''}, then per lead {p.leads.steps})",
    ]
    mine = sum(r.mine for r in relevant)
    if relevant:
        query = query_key(config.business_type, config.location)
        same = sum(r.outcome.query == query for r in relevant)
        text = (
            f"{len(relevant)} earlier campaigns ({mine} of yours, {len(relevant) - mine} "
            "of this deployment's others"
        )
        text += f", {same} for the same search)" if same else ")"
        parts.append(text + " with these providers, blended with priors")
    else:
        parts.append(
            "no earlier campaigns with these providers: priors (about "
            f"{prior_pass(config.min_confidence_score):.0%} of places qualifying at this "
            f"minimum score, {p.leads.email_share:.0%} of leads with an email found)"
        )
    if model.cached_same_query is not None:
        parts.append(f"the cache (the same search's {model.cached_same_query} leads are paid for)")
    elif model.cache.mean > 0.005:
        parts.append(f"the cache (about {model.cache.mean:.0%} of leads answered from it)")
    if config.budget_limit_micros:
        parts.append(f"the budget (${micros_to_usd(config.budget_limit_micros):.2f})")
    return "; ".join(parts)
