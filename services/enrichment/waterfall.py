"""The email waterfall: one lead's finders, cheapest first, until an address verifies.

Steps (EMAIL_WATERFALL, in its order; "hunter" alone is enrichment before the waterfall):

- ``website``: the addresses the business's own site publishes (services/enrichment/
  website.py). Reading the site is free; each address is then verified, in the step's name.
- ``pattern``: the domain's role addresses (ROLE_ADDRESSES) when its MX says it receives
  mail (services/enrichment/patterns.py), each verified at the verifier's price. Skipped
  when the campaign does not verify: an unverified guess is worth nothing.
- ``hunter``: the paid email finder's search (its answer cached per domain), then its
  address verified.

The first address that verifies ``valid`` ends the waterfall. When none does, the lead
keeps the best address found (catchall, then unknown, then disposable, then invalid; a
guessed role address only when it was not invalid), and the step that found it; without
verification, the first address found. Every paid call is made only if the lead's
allowance still covers it; when it does not, the waterfall stops with what it has.

Each lead records which step found its email (``email_source``) and what each step cost
(``cost_by_step_micros``). A domain's outcome is cached (services/common/cache.py): a later
lead of the same domain, in any campaign, takes it at no cost (``email_source`` "cache")
when it was a valid address or came from at least the steps this waterfall runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from prospect.v1 import work_pb2
from services.common import worker_metrics
from services.common.allowance import Allowance
from services.common.cache import CachedEmail, CachedOutcome, CachedVerification, EnrichmentCache
from services.common.domains import domain_of
from services.common.email_steps import CACHE, HUNTER, PATTERN, WEBSITE
from services.common.money import usd_to_micros
from services.common.plan import WEBSITE_CANDIDATES_MAX
from services.common.providers import SANDBOX, Charge, EmailFinder, EmailVerifier, Providers
from services.common.providers.sandbox import SandboxMx, SandboxWebsite
from services.common.settings import Settings
from services.enrichment.patterns import MxCheck, mx_check, role_addresses
from services.enrichment.website import WebsiteFetcher

# A verification's worth when no address is valid: the lead keeps the best one found.
_RANK = {"valid": 6, "catchall": 5, "unknown": 4, "unverified": 3, "disposable": 2, "invalid": 1}


class WebsiteEmails(Protocol):
    """The website step's reader (services/enrichment/website.py, or the sandbox's)."""

    async def emails(self, website: str, domain: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Found:
    email: str
    status: str  # the verifier's word, or "unverified"
    step: str


@dataclass(slots=True)
class _Run:
    """One lead's waterfall as it goes."""

    best: Found | None = None
    checked: dict[str, str] = field(default_factory=dict)  # address -> status, this lead
    cost_by_step: dict[str, int] = field(default_factory=dict)
    from_cache: bool = False
    stopped: bool = False  # budget or cancellation: the outcome is not the domain's

    def consider(self, found: Found) -> None:
        if found.step == PATTERN and found.status in ("invalid", "unverified"):
            return  # a guess nobody confirmed was never an address
        if self.best is None or _RANK.get(found.status, 0) > _RANK.get(self.best.status, 0):
            self.best = found

    def bill(self, step: str, charges: list[Charge]) -> None:
        micros = sum(usd_to_micros(c.cost_usd) for c in charges)
        self.cost_by_step[step] = self.cost_by_step.get(step, 0) + micros

    @property
    def done(self) -> bool:
        return self.stopped or (self.best is not None and self.best.status == "valid")


class Waterfall:
    """Runs EMAIL_WATERFALL for one lead at a time (see the module docstring)."""

    def __init__(
        self,
        steps: tuple[str, ...],
        roles: tuple[str, ...],
        *,
        website: WebsiteEmails,
        mx: MxCheck,
        finder: EmailFinder,
        verifier: EmailVerifier,
        cache: EnrichmentCache,
    ) -> None:
        self.steps, self.roles = steps, roles
        self._website, self._mx = website, mx
        self._finder, self._verifier, self._cache = finder, verifier, cache
        # Outcomes are cached per pair of paid providers: a sandbox answer never stands in
        # for a real one.
        self._outcomes = f"{finder.name}-{verifier.name}"

    def verifications(self, verify: bool) -> int:
        """The most verifications one lead makes."""
        if not verify:
            return 0
        most = {WEBSITE: WEBSITE_CANDIDATES_MAX, PATTERN: len(self.roles), HUNTER: 1}
        return sum(most[step] for step in self.steps)

    def lead_price(self, verify: bool) -> float:
        """The most one lead costs, every step paying all it may."""
        search = self._finder.price("email_search") if HUNTER in self.steps else 0.0
        return search + self.verifications(verify) * self._verifier.price("verify")

    async def enrich(
        self,
        task: work_pb2.EnrichmentTask,
        allowance: Allowance,
        charges: list[Charge],
        cancelled: Callable[[], bool],
    ) -> work_pb2.EnrichmentResult:
        """The lead's result; ``charges`` collects each billable call as it is made."""
        result = work_pb2.EnrichmentResult(
            lead_id=task.lead_id,
            lead_price_micros=usd_to_micros(self.lead_price(task.verify_emails)),
        )
        domain = domain_of(task.place.website)
        if not domain:
            result.email_status = "no_website"
            return result
        verify = task.verify_emails
        if verify and (cached := await self._reusable(domain)) is not None:
            result.from_cache = True
            result.email, result.email_status = cached.email, cached.status or "not_found"
            result.email_source = CACHE if cached.email else ""
            result.verified = bool(cached.email)
            return result
        run = _Run()
        skipped_budget = False
        for step in self.steps:
            if step == PATTERN and not verify:
                continue
            candidates = await self._candidates(step, task, domain, allowance, charges, run)
            if candidates is None:  # the search did not fit the allowance
                skipped_budget, run.stopped = True, True
                break
            for email in candidates:
                status = await self._check(step, email, verify, allowance, charges, run, cancelled)
                if run.done or not verify:
                    break
                if step == PATTERN and status == "catchall":
                    break  # the domain takes any address: the other guesses would say the same
            if run.done or (not verify and run.best is not None):
                break
        result.from_cache = run.from_cache
        result.cost_by_step_micros.update(run.cost_by_step)
        best = run.best
        if best is None:
            result.email_status = "skipped_budget" if skipped_budget else "not_found"
            if skipped_budget:
                worker_metrics.LEADS_SKIPPED_BUDGET.inc()
            elif verify and not run.stopped:
                await self._remember(domain, Found("", "not_found", ""))
            return result
        result.email, result.email_status, result.email_source = best.email, best.status, best.step
        result.verified = best.status != "unverified"
        if verify and not run.stopped and result.verified:
            await self._remember(domain, best)
        return result

    async def _reusable(self, domain: str) -> CachedOutcome | None:
        """The domain's cached outcome when it answers this waterfall: a valid address, or
        the outcome of at least these steps."""
        cached = await self._cache.outcome(self._outcomes, domain)
        if cached is None:
            return None
        if cached.status == "valid" or set(self.steps) <= set(cached.steps):
            return cached
        return None

    async def _remember(self, domain: str, found: Found) -> None:
        outcome = CachedOutcome(found.email, found.status, found.step, self.steps)
        await self._cache.store_outcome(self._outcomes, domain, outcome)

    async def _candidates(
        self,
        step: str,
        task: work_pb2.EnrichmentTask,
        domain: str,
        allowance: Allowance,
        charges: list[Charge],
        run: _Run,
    ) -> list[str] | None:
        """The addresses ``step`` offers for ``domain``; None when its paid search does
        not fit the allowance."""
        if step == WEBSITE:
            found = await self._website.emails(task.place.website, domain)
            return found[:WEBSITE_CANDIDATES_MAX]
        if step == PATTERN:
            if not await self._mx.accepts_mail(domain):
                return []
            return role_addresses(domain, self.roles)
        cached = await self._cache.email(self._finder.name, domain)
        if cached is not None:
            run.from_cache = True
        else:
            search = await allowance.spend(
                usd_to_micros(self._finder.price("email_search")),
                lambda: self._finder.find_email(domain, task.place.name),
                lambda found: found.charges,
            )
            if search is None:
                return None
            charges.extend(search.charges)
            run.bill(HUNTER, search.charges)
            cached = CachedEmail(search.email, search.confidence)
            await self._cache.store_email(self._finder.name, domain, cached)
        return [cached.email] if cached.email else []

    async def _check(
        self,
        step: str,
        email: str,
        verify: bool,
        allowance: Allowance,
        charges: list[Charge],
        run: _Run,
        cancelled: Callable[[], bool],
    ) -> str:
        """Verify ``email`` (once per lead, the cache first), let ``run`` weigh it, and
        return its status ("unverified" when it was not verified)."""
        if not verify:
            run.consider(Found(email, "unverified", step))
            return "unverified"
        status = run.checked.get(email)
        if status is None:
            if cancelled():
                run.stopped = True
                run.consider(Found(email, "unverified", step))
                return "unverified"
            cached = await self._cache.verification(self._verifier.name, email)
            if cached is not None:
                run.from_cache = True
            else:
                verification = await allowance.spend(
                    usd_to_micros(self._verifier.price("verify")),
                    lambda: self._verifier.verify(email),
                    lambda verification: verification.charges,
                )
                if verification is None:  # found, but the budget stops at verifying
                    run.stopped = True
                    run.consider(Found(email, "unverified", step))
                    return "unverified"
                charges.extend(verification.charges)
                run.bill(step, verification.charges)
                cached = CachedVerification(verification.status)
                await self._cache.store_verification(self._verifier.name, email, cached)
            status = run.checked[email] = cached.status
        run.consider(Found(email, status, step))
        return status


def open_waterfall(settings: Settings, providers: Providers, cache: EnrichmentCache) -> Waterfall:
    """The waterfall EMAIL_WATERFALL describes. Its free steps read the real web and DNS
    only when the places are real: a sandbox place's website is made up, so the sandbox
    simulates those steps too (services/common/providers/sandbox.py)."""
    website: WebsiteEmails
    mx: MxCheck
    if providers.places.name == SANDBOX:
        website, mx = SandboxWebsite(settings), SandboxMx(settings)
    else:
        website, mx = WebsiteFetcher(settings), mx_check(settings)
    return Waterfall(
        settings.waterfall_steps,
        settings.role_locals,
        website=website,
        mx=mx,
        finder=providers.email_finder,
        verifier=providers.email_verifier,
        cache=cache,
    )
