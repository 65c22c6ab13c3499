"""The email waterfall against Hunter alone: cost per verified email and verified emails,
from real campaigns on a real stack.

A fixed campaign set (:data:`CAMPAIGNS`: eight text queries, each a campaign of
``max_results`` :data:`MAX_RESULTS`, minimum score 0, ``verify_emails``) runs twice, each
time on a stack of its own (services/cli/stack.Stack: nats-server, the jobs, discovery
and enrichment services; its own temporary data directory, so its own database,
JetStream store and enrichment cache) and fresh fake providers with fake business
websites on loopback (tests/fakes, ``FakeProviders(websites=True)``, the same seed: the
same places, sites and addresses): once with the enrichment worker on
EMAIL_WATERFALL=hunter (the baseline), once on the default order (website, pattern,
hunter). Both with ``WEBSITE_ALLOWED_HOSTS=.localhost`` (the fake sites' names) and
``MX_RESOLVER=none`` (no DNS here: every domain is taken to receive mail, the pattern
step's most expensive case), as tests/e2e/test_waterfall.py runs them.

The two arms share no cached answer (separate stacks), and within an arm the cache
answers nobody: every domain of the fake world belongs to one query (checked:
``leads_from_cache`` is 0). Cost is what the jobs' books say enrichment spent: each
job's ``total_cost_micros`` minus its ``cost_by_provider_micros["google_places"]``
(discovery, the same in both arms), checked equal to the sum of its leads'
``cost_by_step_micros`` and to what the fake Hunter and NeverBounce billed for its query.
Verified emails are the leads whose ``email_status`` is ``valid`` (checked equal to the
job's ``emails_verified``).

``cost_per_verified_email_ratio`` is the waterfall's enrichment cost per verified email
over Hunter alone's; the issue's target is at most 0.6 with at least as many verified
emails (``waterfall_verified_emails`` >= ``hunter_only_verified_emails``). The world's
odds (tests/fakes/world.py) are what the ratio rests on: ~45% of sites publish an
address, a fifth of contact pages are closed to robots, ~30% of domains have a working
info@ besides Hunter's generic addresses, 12% accept all addresses. Alone:
``python -m bench.waterfall``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass, field

import grpc

from bench.config import FAKES_STACK_ENV
from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import list_all_leads, watch_until_done
from services.cli.stack import Stack
from tests.fakes import FakeProviders

CAMPAIGNS = tuple(
    (kind, f"{city} {n}")
    for n, (kind, city) in enumerate(
        [("bakery", "Springfield"), ("coffee", "Portland"), ("dentist", "Austin"),
         ("plumber", "Seattle"), ("restaurant", "Chicago"), ("bakery", "Salem"),
         ("coffee", "Tacoma"), ("dentist", "Dallas")]
    )
)  # fmt: skip
PLACES_PER_QUERY = 20
MAX_RESULTS = 20  # every place of the query a lead (the search asks for 40, finds 20)
HUNTER_ONLY, WATERFALL = "hunter", ""  # "": the default order, website,pattern,hunter
DISCOVERY = "google_places"
CAMPAIGN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Campaign:
    query: str
    leads: int
    verified: int  # leads whose email verified valid
    cost_micros: int  # enrichment's spend, from the job's books


@dataclass(frozen=True)
class Run:
    steps: str
    campaigns: tuple[Campaign, ...]
    by_source: dict[str, int] = field(default_factory=dict)

    @property
    def leads(self) -> int:
        return sum(c.leads for c in self.campaigns)

    @property
    def verified(self) -> int:
        return sum(c.verified for c in self.campaigns)

    @property
    def cost_micros(self) -> int:
        return sum(c.cost_micros for c in self.campaigns)

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

    def lines(self) -> list[str]:
        """One line per campaign (verified emails and enrichment cost of each arm), then
        the totals and where the waterfall's emails came from."""
        out = []
        for h, w in zip(self.hunter_only.campaigns, self.waterfall.campaigns, strict=True):
            out.append(
                f"{h.query:<28} {h.leads:3d} leads  verified hunter {h.verified:3d} / "
                f"waterfall {w.verified:3d}  cost hunter ${h.cost_micros / 1e6:7.4f} / "
                f"waterfall ${w.cost_micros / 1e6:7.4f}"
            )
        for run in (self.hunter_only, self.waterfall):
            sources = ", ".join(f"{k} {v}" for k, v in sorted(run.by_source.items()))
            out.append(
                f"{run.steps or 'website,pattern,hunter (default)'}: {run.leads} leads, "
                f"{run.verified} verified, ${run.cost_micros / 1e6:.4f}, "
                f"${run.per_verified_micros / 1e6:.5f} per verified email; sources: {sources}"
            )
        return out


def _query(business: str, location: str) -> str:
    return f"{business} in {location}"  # the Google adapter's text query: the fakes' job key


def _enrichment_billed(fakes: FakeProviders, query: str) -> int:
    return sum(b.price_micros for f in (fakes.hunter, fakes.neverbounce)
               for b in f.operations if b.job_key == query)  # fmt: skip


async def _campaign(
    stub: jobs_pb2_grpc.JobServiceStub, fakes: FakeProviders, business: str, location: str
) -> tuple[Campaign, Counter[str]]:
    config = jobs_pb2.CampaignConfig(
        business_type=business, location=location, max_results=MAX_RESULTS,
        min_confidence_score=0, verify_emails=True,
    )  # fmt: skip
    answer = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
    async with asyncio.timeout(CAMPAIGN_TIMEOUT_S):
        job = await watch_until_done(stub, answer.job_id, lambda _: None)
    query = _query(business, location)
    if job.status != jobs_pb2.JOB_STATUS_COMPLETED:
        raise RuntimeError(f"campaign {query!r} ended {job.status}: {job.error}")
    leads = await list_all_leads(stub, answer.job_id)
    m = job.metrics
    spent = m.total_cost_micros - m.cost_by_provider_micros.get(DISCOVERY, 0)
    by_steps = sum(sum(lead.cost_by_step_micros.values()) for lead in leads)
    billed = _enrichment_billed(fakes, query)
    if not spent == by_steps == billed:
        raise AssertionError(
            f"{query}: enrichment booked {spent}, by the leads' steps {by_steps}, "
            f"billed by the fakes {billed} (micro-dollars)"
        )
    verified = sum(lead.email_status == "valid" for lead in leads)
    if verified != m.emails_verified or m.leads_from_cache:
        raise AssertionError(
            f"{query}: {verified} valid leads, metrics {m.emails_verified} verified, "
            f"{m.leads_from_cache} from the cache"
        )
    sources = Counter(lead.email_source or "none" for lead in leads)
    return Campaign(query, len(leads), verified, spent), sources


async def _run(steps: str) -> Run:
    """The campaign set on a stack and fakes of its own, EMAIL_WATERFALL=``steps`` (the
    default when empty)."""
    with FakeProviders(places_per_query=PLACES_PER_QUERY, websites=True) as fakes:
        env = {**fakes.env(), **FAKES_STACK_ENV}
        if steps:
            env["EMAIL_WATERFALL"] = steps
        stack = Stack(env=env)
        await asyncio.to_thread(stack.start)
        try:
            async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
                stub = jobs_pb2_grpc.JobServiceStub(channel)
                done = await asyncio.gather(
                    *(_campaign(stub, fakes, business, loc) for business, loc in CAMPAIGNS)
                )
        finally:
            await asyncio.to_thread(stack.stop)
        total = sum(c.cost_micros for c, _ in done)
        enrichment_billed = sum(
            b.price_micros for f in (fakes.hunter, fakes.neverbounce) for b in f.operations
        )
        if total != enrichment_billed:
            raise AssertionError(f"{steps}: booked {total}, the fakes billed {enrichment_billed}")
        by_source: Counter[str] = Counter()
        for _, sources in done:
            by_source.update(sources)
        return Run(steps, tuple(c for c, _ in done), dict(by_source))


async def run_waterfall() -> WaterfallResult:
    return WaterfallResult(await _run(HUNTER_ONLY), await _run(WATERFALL))


def main() -> None:
    result = asyncio.run(run_waterfall())
    for line in result.lines():
        print(line, file=sys.stderr)
    print(
        json.dumps(
            {
                "cost_per_verified_email_ratio": round(result.ratio, 3),
                "waterfall_verified_emails": result.waterfall.verified,
                "hunter_only_verified_emails": result.hunter_only.verified,
            }
        )
    )


if __name__ == "__main__":
    main()
