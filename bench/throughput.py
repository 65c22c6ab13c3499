"""Sustained throughput: zero-latency sandbox providers, 10 businesses and 5 leads per
campaign, a closed loop keeping ``inflight`` campaigns running (each followed by WatchJob,
as a client would), for about ``seconds``.

Steady state starts when the first ``inflight`` campaigns have completed (every slot has
gone round once; and not before 15% of the run), and ends when submitting stops; the run
is stretched (up to half its length again) so that window is at least 60% of ``seconds``.
Meanwhile the RSS and CPU time of the services, nats-server and the bench itself are
sampled: peak RSS over the whole run, CPU over the steady-state window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.config import log
from bench.harness import Harness
from bench.load import CampaignLoad, campaign
from bench.stats import percentile, rate

SERVICES = ("jobs", "discovery", "enrichment")
LEADS = 5  # each campaign's max_results: a completed one has enriched exactly this many


@dataclass
class ThroughputResult:
    campaigns_per_s: float
    leads_per_s: float
    window_s: float
    completed: int
    not_completed: int
    peak_rss_mb: dict[str, float]
    cpu_cores: dict[str, float] = field(default_factory=dict)
    progress_p50_ms: float = math.nan  # under this load (table only)
    progress_p99_ms: float = math.nan
    campaign_p50_s: float = math.nan  # submit to completion
    others_cores: float = math.nan  # the machine's busy cores besides those sampled
    wrong_lead_count: int = 0  # campaigns COMPLETED with other than LEADS leads enriched
    stalled: int = 0  # campaigns still running at the end that ran through the whole window

    def cpu_ms_per_campaign(self) -> dict[str, float]:
        """CPU milliseconds each sampled process spent per campaign completed, over the
        steady-state window."""
        if self.campaigns_per_s <= 0:
            return {}
        return {name: 1000 * cores / self.campaigns_per_s for name, cores in self.cpu_cores.items()}


async def run_throughput(
    harness: Harness, seconds: float, inflight: int, others: Mapping[str, int] | None = None
) -> ThroughputResult:
    """The run; ``others`` (name -> pid) are sampled with the stack's processes."""
    sampler = harness.sampler(SERVICES, others)
    sampler.start()
    load = CampaignLoad(harness.channel, inflight, lambda n: campaign(n, max_results=LEADS))
    load.start()
    try:
        await load.run_for(seconds)
        while True:
            first = load.seen.nth_completion(inflight)
            start = max(load.started_at + 0.15 * seconds, first or math.inf)
            elapsed = time.monotonic() - load.started_at
            if time.monotonic() - start >= 0.6 * seconds or elapsed >= 1.5 * seconds:
                break
            await load.run_for(0.5)
    finally:
        end = await load.stop()
        await sampler.stop()
    seen = load.seen
    if math.isinf(start) or end - start < 1.0:
        log("throughput: no steady state reached; rates are over the whole run")
        start = load.started_at
    walls = seen.walls
    under_load = seen.latencies(start, end)
    return ThroughputResult(
        campaigns_per_s=rate(seen.completions, start, end),
        leads_per_s=rate(seen.leads_done, start, end),
        window_s=end - start,
        completed=len(seen.completions),
        not_completed=seen.not_completed,
        peak_rss_mb={label: sampler.peak_mb[label] for label in SERVICES},
        cpu_cores=sampler.cpu_share(start, end),
        others_cores=sampler.others_share(start, end),
        progress_p50_ms=percentile(under_load, 50),
        progress_p99_ms=percentile(under_load, 99),
        campaign_p50_s=percentile(walls, 50),
        wrong_lead_count=sum(1 for _, leads in seen.leads_done if leads != LEADS),
        # A campaign takes well under a second here: one running all the window waits on
        # something that will not come (a lost task or report).
        stalled=sum(1 for age in seen.running_at_stop if age > end - start),
    )
