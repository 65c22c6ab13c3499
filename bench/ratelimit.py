"""Rate-limit saturation: enrichment against the fake Hunter (tests.fakes), which allows
``rps`` requests per second with bursts of ``burst`` and answers Hunter's own rate-limit
response (HTTP 403) above that; the services are given the same limit
(RATE_LIMIT_HUNTER_RPS / _BURST). Places and verification stay on the zero-latency
sandbox. Campaigns of 5 leads in a closed loop keep far more email searches waiting than
the limit lets through, so the limiter, not the demand, sets the pace.

Utilization is the rate of requests the fake received over the steady state (after the
opening burst) divided by ``rps``; ``rate_limited`` counts the 403s it answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.harness import Harness
from bench.load import CampaignLoad, campaign
from tests.fakes import FakeHunter

WARMUP_S = 2.0


@dataclass
class RatelimitResult:
    rps: float
    burst: int
    achieved_rps: float
    rate_limited: int
    requests: int

    @property
    def utilization(self) -> float:
        return self.achieved_rps / self.rps


async def run_ratelimit(
    harness: Harness, hunter: FakeHunter, seconds: float, inflight: int
) -> RatelimitResult:
    rps, burst = harness.config.ratelimit_rps, harness.config.ratelimit_burst
    load = CampaignLoad(harness.channel, inflight, lambda n: campaign(n, max_results=5))
    load.start()
    try:
        await load.run_for(WARMUP_S + seconds)
        end = time.monotonic()
    finally:
        await load.stop()
    start = load.started_at + WARMUP_S
    stamps = [r.ts for r in hunter.requests]
    inside = sum(1 for ts in stamps if start < ts <= end)
    return RatelimitResult(
        rps=rps,
        burst=burst,
        achieved_rps=inside / (end - start),
        rate_limited=hunter.rate_limited,
        requests=len(stamps),
    )
