"""Scale-out: enrichment throughput with two enrichment workers over one.

Providers at 300 ms a call, campaigns of 20 leads, a closed loop of campaigns in flight,
and each enrichment worker limited to ``SCALEOUT_ENRICHMENT_CONCURRENCY`` tasks at once so
that enrichment is the bottleneck (see :mod:`bench.config`). Phase one runs with the
worker labelled ``enrichment``; phase two adds ``enrichment-2`` while the load goes on.
The rate of each phase is leads enriched per second (from the ``leads_enriched`` of every
watched job) over the phase after its warm-up. Every campaign is the same market, so every
campaign is the same work (leads without a website or email need fewer calls) and the two
phases compare like with like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.config import log
from bench.harness import Harness
from bench.load import CampaignLoad, campaign
from bench.stats import rate

LEADS = 20
WARMUP_ONE_S = 3.0  # first campaigns through discovery (~2 s) before any lead is queued
WARMUP_TWO_S = 1.0  # the second worker fetching its first tasks


@dataclass
class ScaleoutResult:
    one_worker_leads_per_s: float
    two_workers_leads_per_s: float

    @property
    def ratio(self) -> float:
        if not self.one_worker_leads_per_s:
            return math.nan
        return self.two_workers_leads_per_s / self.one_worker_leads_per_s


async def run_scaleout(
    harness: Harness,
    phase_s: float,
    inflight: int,
    add_second_worker: Callable[[], Awaitable[None]],
) -> ScaleoutResult:
    load = CampaignLoad(
        harness.channel, inflight, lambda n: campaign(n, max_results=LEADS, vary=False)
    )
    load.start()
    try:
        await load.run_for(WARMUP_ONE_S + phase_s)
        one_end = time.monotonic()
        one = rate(load.seen.lead_events, load.started_at + WARMUP_ONE_S, one_end)
        log(f"scale-out: one enrichment worker: {one:.1f} leads/s")
        await add_second_worker()
        two_start = time.monotonic() + WARMUP_TWO_S
        await load.run_for(WARMUP_TWO_S + phase_s)
        two = rate(load.seen.lead_events, two_start, time.monotonic())
        log(f"scale-out: two enrichment workers: {two:.1f} leads/s")
    finally:
        await load.stop()
    return ScaleoutResult(one, two)
