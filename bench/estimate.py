"""How good EstimateCampaign is: a fixed set of campaigns on the fake providers (Google
Places, Hunter and NeverBounce speaking their wire formats, billing per text query), each
estimated, then run, its actual cost (``total_cost_micros``) compared with the estimate.

A few campaigns run first to give the estimator a history (they are not scored); then
each campaign of :data:`CAMPAIGNS` is estimated and run to its end, one at a time, so its
estimate rests on every campaign before it, as a user's would. Figures:
``estimate_p50_error``, the median over the set of |actual - p50| / actual (target at most
0.15), and ``estimate_in_range_ratio``, the share of campaigns whose actual cost falls
within p10-p90 (target at least 0.8). The estimates must call no provider
(``estimate_provider_calls``, the fakes' request count across every estimate: 0).

The stack runs the default email waterfall (website, pattern, hunter) on fake business
websites served on loopback (``FakeProviders(websites=True)``: ``WEBSITE_ALLOWED_HOSTS``
for their names, ``MX_RESOLVER=none`` as there is no DNS here), so the estimate follows
all three steps and the history it learns from is the waterfall's; the websites' requests
count among the provider calls too. One campaign repeats an earlier search: its leads'
domains are in the enrichment cache, which the estimate must see. Alone:
``python -m bench.estimate`` (``BENCH_QUICK=1`` for fewer campaigns).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
from dataclasses import dataclass, field

import grpc

from bench.config import FAKES_STACK_ENV
from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import watch_until_done
from services.cli.stack import Stack
from tests.fakes import FakeProviders

STACK_ENV = {**FAKES_STACK_ENV, "ENRICHMENT_CACHE_DAYS": "30"}
PLACES_PER_QUERY = 30
TARGET_P50_ERROR = 0.15
TARGET_IN_RANGE = 0.8

# (business type, max_results, min score, verify): the warm-up's, then the scored set's.
WARMUP = [
    ("bakery", 10, 50, True), ("dentist", 15, 60, True), ("coffee shop", 8, 0, True),
    ("plumber", 20, 50, True), ("restaurant", 12, 70, False), ("bakery", 25, 40, True),
]  # fmt: skip
CAMPAIGNS = [
    ("bakery", 10, 50, True), ("dentist", 12, 60, True), ("coffee shop", 15, 50, True),
    ("plumber", 20, 0, True), ("restaurant", 8, 50, True), ("bakery", 25, 60, True),
    ("dentist", 10, 70, True), ("coffee shop", 20, 40, True), ("plumber", 12, 50, False),
    ("restaurant", 15, 60, True), ("bakery", 18, 50, True), ("dentist", 25, 50, True),
    ("coffee shop", 10, 60, False), ("plumber", 15, 70, True), ("restaurant", 20, 50, True),
    ("bakery", 12, 0, True), ("dentist", 20, 60, True), ("coffee shop", 25, 50, True),
    ("plumber", 10, 60, True), ("restaurant", 25, 40, True),
]  # fmt: skip
QUICK_CAMPAIGNS = 10


@dataclass
class Scored:
    query: str
    estimate: jobs_pb2.CampaignEstimate
    actual_micros: int

    @property
    def error(self) -> float:
        return abs(self.actual_micros - self.estimate.total.p50_micros) / max(1, self.actual_micros)

    @property
    def in_range(self) -> bool:
        t = self.estimate.total
        return t.p10_micros <= self.actual_micros <= t.p90_micros


@dataclass
class EstimateResult:
    scored: list[Scored] = field(default_factory=list)
    provider_calls: int = 0  # requests the fakes received while estimates were made

    @property
    def p50_error(self) -> float:
        return statistics.median(s.error for s in self.scored) if self.scored else float("nan")

    @property
    def in_range_ratio(self) -> float:
        return sum(s.in_range for s in self.scored) / len(self.scored) if self.scored else 0.0

    def figures(self) -> dict[str, float | int | None]:
        return {
            "estimate_p50_error": round(self.p50_error, 3),
            "estimate_in_range_ratio": round(self.in_range_ratio, 3),
            "estimate_provider_calls": self.provider_calls,
        }

    def lines(self) -> list[str]:
        """One line per campaign: the actual cost against the range."""
        out = []
        for s in self.scored:
            t = s.estimate.total
            out.append(
                f"{s.query:<34} actual {s.actual_micros / 1e6:7.4f}  p10 {t.p10_micros / 1e6:7.4f}"
                f"  p50 {t.p50_micros / 1e6:7.4f}  p90 {t.p90_micros / 1e6:7.4f}  "
                f"error {s.error:5.1%}{'' if s.in_range else '  OUTSIDE'}"
            )
        return out


def _config(n: int, spec: tuple[str, int, int, bool], town: str) -> jobs_pb2.CampaignConfig:
    business, max_results, min_score, verify = spec
    return jobs_pb2.CampaignConfig(
        business_type=business, location=f"{town} {n}", max_results=max_results,
        min_confidence_score=min_score, verify_emails=verify,
    )  # fmt: skip


def _requests(fakes: FakeProviders) -> int:
    sites = fakes.websites.requests if fakes.websites is not None else []
    return sum(len(f.requests) for f in fakes.fakes) + len(sites)


async def _run(stub: jobs_pb2_grpc.JobServiceStub, config: jobs_pb2.CampaignConfig) -> int:
    """Run ``config`` to its end; its total cost in micro-dollars."""
    answer = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
    job = await watch_until_done(stub, answer.job_id, lambda _: None)
    if job.status != jobs_pb2.JOB_STATUS_COMPLETED:
        raise RuntimeError(f"campaign {config.location!r} ended {job.status}: {job.error}")
    return int(job.metrics.total_cost_micros)


async def run_estimate(
    channel: grpc.aio.Channel, fakes: FakeProviders, campaigns: int = len(CAMPAIGNS)
) -> EstimateResult:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    result = EstimateResult()
    for n, spec in enumerate(WARMUP):
        await _run(stub, _config(n, spec, "Warmup"))
    specs = [_config(n, spec, "Estimate") for n, spec in enumerate(CAMPAIGNS[:campaigns])]
    # The last campaign repeats the first warm-up's search: the cache answers its leads.
    specs.append(_config(0, WARMUP[0], "Warmup"))
    for config in specs:
        before = _requests(fakes)
        estimate = await stub.EstimateCampaign(jobs_pb2.EstimateCampaignRequest(config=config))
        result.provider_calls += _requests(fakes) - before
        actual = await _run(stub, config)
        query = f"{config.business_type} in {config.location}"
        result.scored.append(Scored(query, estimate, actual))
    return result


async def estimate_on_own_stack(campaigns: int) -> EstimateResult:
    """The scenario on a stack and fakes of its own (started and stopped here)."""
    with FakeProviders(places_per_query=PLACES_PER_QUERY, websites=True) as fakes:
        stack = Stack(env={**fakes.env(), **STACK_ENV})
        await asyncio.to_thread(stack.start)
        try:
            async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
                return await run_estimate(channel, fakes, campaigns)
        finally:
            await asyncio.to_thread(stack.stop)


def campaign_count(quick: bool) -> int:
    """Campaigns scored: all of :data:`CAMPAIGNS`, or the first few in a quick run."""
    return QUICK_CAMPAIGNS if quick else len(CAMPAIGNS)


def quick() -> bool:
    return os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")


def main() -> None:
    result = asyncio.run(estimate_on_own_stack(campaign_count(quick())))
    for line in result.lines():
        print(line, file=sys.stderr)
    f = result.figures()
    print(
        f"estimate: p50 error {f['estimate_p50_error']} (target <= {TARGET_P50_ERROR}), "
        f"in range {f['estimate_in_range_ratio']} (target >= {TARGET_IN_RANGE}), "
        f"{f['estimate_provider_calls']} provider calls while estimating",
        file=sys.stderr,
    )
    print(json.dumps(f))


if __name__ == "__main__":
    main()
