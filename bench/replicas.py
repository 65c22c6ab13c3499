"""Two jobs replicas applying reports together, against one (docs/capacity.md's check).

On the drained throughput stack, the jobs service is restarted with the events stream in
:data:`PARTITIONS` partitions, and the throughput load runs twice: with that one replica
applying every partition, then with a second jobs process (``jobs-2``) beside it, the two
sharing the partitions by rendezvous hashing (services/jobs/partitions.py). Submits and
watch streams go to the first replica, as a client pinned to one address would; each
report is applied by the replica owning its job's partition.

``replicas_2_jobs_cpu_ratio`` is the two replicas' CPU per campaign together over the one
replica's: more than 1 means a second replica costs more than the work it takes over.
Every campaign must end COMPLETED with all its leads (``replicas_2_bad_campaigns`` counts
those that did not: ended otherwise, completed with another lead count, which a report
applied twice would cause, or still running after the whole measured window, as a lost
report would leave it; a campaign takes well under a second here).
Afterwards ``jobs-2`` stops and the jobs service runs again as before (one partition).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from bench.config import log
from bench.harness import Harness
from bench.stats import rounded
from bench.throughput import ThroughputResult, run_throughput
from services.cli.stack import free_port
from services.jobs.partitions import HEARTBEAT_S

PARTITIONS = 4
SECOND = "jobs-2"
# Both replicas heard each other's heartbeat and moved their partitions.
SETTLE_S = 3 * HEARTBEAT_S


@dataclass
class ReplicasResult:
    one: ThroughputResult
    two: ThroughputResult

    def jobs_cpu_ms(self, run: ThroughputResult) -> float:
        """The jobs replicas' CPU milliseconds per campaign, together."""
        per = run.cpu_ms_per_campaign()
        return per.get("jobs", 0.0) + per.get(SECOND, 0.0)

    @property
    def cpu_ratio(self) -> float:
        one = self.jobs_cpu_ms(self.one)
        return self.jobs_cpu_ms(self.two) / one if one else math.nan

    @property
    def bad_campaigns(self) -> int:
        two = self.two
        return two.not_completed + two.wrong_lead_count + two.stalled

    def lines(self) -> list[str]:
        def cpu(run: ThroughputResult) -> str:
            per = run.cpu_ms_per_campaign()
            return ", ".join(f"{name} {per[name]:.2f}" for name in ("jobs", SECOND) if name in per)

        one, two = self.one, self.two
        return [
            f"  replicas ({PARTITIONS} report partitions): one jobs replica "
            f"{one.campaigns_per_s:.1f} campaigns/s, two {two.campaigns_per_s:.1f}; jobs CPU "
            f"ms a campaign: {cpu(one)} -> {cpu(two)} (together {self.jobs_cpu_ms(two):.2f}, "
            f"{self.cpu_ratio:.3f} of one's); two replicas: {two.completed} completed, "
            f"{two.not_completed} not COMPLETED, {two.wrong_lead_count} with another lead count, "
            f"{two.stalled} stalled",
        ]


KEYS = (
    "replicas_1_campaigns_per_s",
    "replicas_2_campaigns_per_s",
    "replicas_2_jobs_cpu_ratio",
    "replicas_2_bad_campaigns",
)


def replicas_figures(rp: ReplicasResult | None) -> dict[str, float | None]:
    """The scenario's keys; None for each when it did not run."""
    if rp is None:
        return dict.fromkeys(KEYS)
    return {
        "replicas_1_campaigns_per_s": rounded(rp.one.campaigns_per_s),
        "replicas_2_campaigns_per_s": rounded(rp.two.campaigns_per_s),
        "replicas_2_jobs_cpu_ratio": rounded(rp.cpu_ratio, 3),
        "replicas_2_bad_campaigns": rp.bad_campaigns,
    }


async def run_replicas(h: Harness, seconds: float, inflight: int) -> ReplicasResult:
    env = {"REPORT_PARTITIONS": str(PARTITIONS)}
    await h.restart([("jobs", "jobs", env)])
    try:
        one = await run_throughput(h, seconds, inflight)
        log(f"replicas: one jobs replica {one.campaigns_per_s:.1f} campaigns/s")
        await h.wait_drained()
        second = {**env, "JOBS_GRPC_ADDR": f"127.0.0.1:{free_port()}"}
        await h.start_workers([("jobs", SECOND, second)])
        await asyncio.sleep(SETTLE_S)
        two = await run_throughput(h, seconds, inflight, {SECOND: h.pid(SECOND)})
        log(f"replicas: two jobs replicas {two.campaigns_per_s:.1f} campaigns/s")
        h.check_alive()
        await h.wait_drained()
    finally:
        if SECOND in h.stack.processes:
            await h.stop_workers([SECOND])
        await h.restart([("jobs", "jobs", {})])
    return ReplicasResult(one, two)
