"""What the bench runs: sizes and durations (full or ``BENCH_QUICK``), and service settings."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

# Settings every service of the bench stack gets.
STACK_ENV = {
    "LOG_LEVEL": "WARNING",
    "MAX_ACTIVE_JOBS_PER_USER": "1000000",  # thousands of jobs of one (local) user at once
    "MAX_WATCHES_PER_USER": "100000",  # a watch stream per campaign in flight
    "ENRICHMENT_CACHE_DAYS": "0",  # never skip work because a domain was seen before
    "SANDBOX_LATENCY_MS": "0",
    "SANDBOX_MAX_PLACES": "10",
    # Observability off whatever the launcher's environment says (the observability
    # scenario turns it on for its processes): no /metrics served, no tracing.
    "METRICS_ADDR": "",
    "OTEL_TRACES_EXPORTER": "none",
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",  # the webhooks scenario's receiver (bench.webhooks)
    # Schedules firing every 1-2 s during throughput (bench.schedules); SCHEDULER_POLL_S
    # stays at its default: the lateness measured is what users get.
    "SCHEDULE_MIN_INTERVAL_S": "1",
    "MAX_SCHEDULES_PER_USER": "1000",
}

# Stacks of their own on the fake providers (bench.estimate, bench.waterfall): quiet, no
# observability, provider limits far above what one campaign at a time asks.
FAKES_STACK_ENV = {
    "LOG_LEVEL": "WARNING",
    "METRICS_ADDR": "",
    "OTEL_TRACES_EXPORTER": "none",
    **{f"RATE_LIMIT_{p}_{k}": v for p in ("GOOGLE_PLACES", "HUNTER", "NEVERBOUNCE")
       for k, v in (("RPS", "200"), ("BURST", "50"))},
}  # fmt: skip

# Workers of the throughput and rate-limit scenarios: zero-latency sandbox, 10 businesses.
FAST_WORKER_ENV = {"SANDBOX_LATENCY_MS": "0", "SANDBOX_MAX_PLACES": "10"}

# Workers of the speedup, progress and scale-out scenarios: 300 ms a provider call. 40 places
# at most makes every market hold 24-40, so a search for 2 x max_results places returns 20
# for a 10-lead campaign and 40 for a 20-lead one (every campaign keeps exactly max_results).
# Their email steps are the sequential baseline's (bench/sequential.py: the original design's
# email search and verification per lead), so the speedup compares the same calls: the
# default waterfall reads each site and verifies what it finds first, a longer chain per
# lead than the baseline's (speedup 3.1-3.3 instead of 6), and bench/waterfall.py
# measures it on its own.
SLOW_LATENCY_MS = 300
SLOW_WORKER_ENV = {
    "SANDBOX_LATENCY_MS": str(SLOW_LATENCY_MS),
    "SANDBOX_MAX_PLACES": "40",
    "EMAIL_WATERFALL": "hunter",
}

# Scale-out: a worker runs 4 enrichment tasks at once (default 16). At 300 ms a call one
# worker then enriches ~9 leads/s, well under what discovery (4 tasks at once, ~2 s per
# 20-lead campaign: ~40 leads/s) and the jobs service supply, so enrichment is the
# bottleneck and a second worker can double it. With 16, one worker already outruns
# discovery and the ratio would measure discovery instead.
SCALEOUT_ENRICHMENT_CONCURRENCY = 4

# SSE streams: this many event streams open at once on the web process, spread over this
# many queued campaigns (the key is ``sse_streams_1k_rss_mb``: the count is not a knob).
SSE_STREAMS = 1000
SSE_STREAM_JOBS = 10


def log(message: str) -> None:
    """Progress on stderr, with the time since the bench started."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    database_url: str | None
    submit_total: int
    submit_clients: int
    speedup_runs: int
    progress_s: float
    progress_inflight: int
    sse_streams: int
    sse_stream_jobs: int
    throughput_s: float
    throughput_inflight: int
    observability_s: float  # each of the five phases (off and on in turn)
    scaleout_phase_s: float
    scaleout_inflight: int
    ratelimit_s: float
    ratelimit_inflight: int
    ratelimit_rps: float
    ratelimit_burst: int
    stack_env: dict[str, str] = field(default_factory=lambda: dict(STACK_ENV))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BenchConfig:
        env = os.environ if env is None else env
        quick = env.get("BENCH_QUICK", "") not in ("", "0", "false", "no")
        return cls(
            quick=quick,
            database_url=env.get("BENCH_DATABASE_URL") or None,
            submit_total=400 if quick else 2000,
            submit_clients=8,
            speedup_runs=1 if quick else 3,
            progress_s=4.0 if quick else 15.0,
            progress_inflight=8,
            sse_streams=SSE_STREAMS,
            sse_stream_jobs=SSE_STREAM_JOBS,
            throughput_s=8.0 if quick else 30.0,
            throughput_inflight=int(env.get("BENCH_INFLIGHT") or 64),
            observability_s=4.0 if quick else 10.0,
            scaleout_phase_s=4.0 if quick else 20.0,
            scaleout_inflight=8,
            ratelimit_s=5.0 if quick else 20.0,
            ratelimit_inflight=32,
            ratelimit_rps=float(env.get("BENCH_RATELIMIT_RPS") or 20),
            ratelimit_burst=int(env.get("BENCH_RATELIMIT_BURST") or 5),
        )
