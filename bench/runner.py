"""The order of the scenarios, and the bench's entry point.

1. nats-server and the jobs service alone: **submit**. On SQLite this is a throwaway stack,
   stopped (with the thousands of jobs it queued) while the main stack starts; with
   ``BENCH_DATABASE_URL`` (one database for all) it is the main stack, and the jobs
   submitted are cancelled before the workers start (they drop the queued tasks).
2. Workers at 300 ms a provider call: **speedup** (the stack's side), then the web
   process started and **progress** (every other campaign followed over its Server-Sent
   Events: the SSE figures), then the enrichment worker swapped for one running 4 tasks
   at once and **scale-out** (a second one added half-way). The sequential side of the
   speedup runs meanwhile in a process of its own: it only sleeps, so it takes nothing
   from the stack.
3. No workers: **watchers** (10,000 WatchJob streams on 100 queued campaigns, the jobs
   service's RSS; then workers of its own at 300 ms a call run the campaigns: update
   latency and how every stream ended; stopped after it), then **SSE streams** (1,000
   event streams on campaigns that stay queued, the web process's RSS); the web process
   is stopped after it.
4. Workers on the zero-latency sandbox: **throughput** (and RSS; 20 schedules fire
   meanwhile: their **lateness**), then **loaded** (campaigns offered at 70% of the
   throughput measured, open loop: live updates under real load), then **bus only** (the
   throughput campaigns' messages on JetStream alone: a nats-server and processes of its
   own, while the stack idles), then **webhooks**, then **observability** (the throughput
   load five times more, the jobs service and the workers restarted before each: metrics
   and tracing off, on, off, on, off), then **replicas** (the throughput load with the events stream
   in four partitions, applied by one jobs replica, then by two), then **waterfall** (a
   fixed campaign set run twice, each time on a stack and fakes of its own with fake
   business websites: Hunter alone, then the default email waterfall), then the enrichment
   worker swapped for one calling the fake Hunter: **rate limit**.
5. A stack of its own on the three fake providers: **estimate** (each campaign of a fixed
   set estimated, then run: the actual cost against the estimate's p50 and p10-p90).
6. With ``BENCH_DATABASE_URL`` only: **large tables** (1,000,000 jobs and 10,000,000 leads
   in a database of its own, a stack of its own on it: reads and the retention purge).

Between scenarios the campaigns still running are cancelled and the queues drained. Every
process is stopped at the end, after a failure and on Ctrl-C or SIGTERM alike.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.bus_only import run_bus_only
from bench.config import (
    FAST_WORKER_ENV,
    SCALEOUT_ENRICHMENT_CONCURRENCY,
    SLOW_WORKER_ENV,
    BenchConfig,
    log,
)
from bench.estimate import campaign_count, estimate_on_own_stack
from bench.grpc_only import replay, run_grpc_only, summary
from bench.harness import Harness
from bench.large_tables import run_large_tables
from bench.load import cancel_jobs
from bench.loaded import run_loaded
from bench.observability import run_observability
from bench.progress import run_progress
from bench.ratelimit import run_ratelimit
from bench.replicas import run_replicas
from bench.report import Results
from bench.scaleout import run_scaleout
from bench.schedules import ScheduleLoad
from bench.speedup import SequentialBaseline, SpeedupResult, run_stack_campaigns
from bench.sse import client_session, raise_fd_limit, run_sse_streams, sse_follow
from bench.stats import percentile
from bench.submit import run_submit
from bench.throughput import run_throughput
from bench.watchers import LEADS, LIMIT_S, QUICK_LEADS, QUICK_LIMIT_S, WORKER_ENV, run_watchers
from bench.waterfall import run_waterfall
from bench.webhooks import run_webhooks
from prospect.v1 import jobs_pb2_grpc
from services.cli.stack import WEB
from tests.fakes import FakeProviders

FDS_SPARE = 1024  # open files besides the SSE streams' sockets (one each, per process)


@asynccontextmanager
async def _scenario(results: Results, name: str) -> AsyncIterator[None]:
    started = time.monotonic()
    log(f"{name}: starting")
    yield
    results.timings[name] = time.monotonic() - started


async def _submit(config: BenchConfig, h: Harness, results: Results) -> list[str]:
    """Start ``h`` without workers and time the submits; returns the jobs submitted."""
    async with _scenario(results, "submit"):
        await h.start()
        submit = await run_submit(
            h.jobs_addr, config.submit_total, config.submit_clients, h.sampler(["jobs"])
        )
        results.submit = submit
        p50, p99 = percentile(submit.latencies_ms, 50), percentile(submit.latencies_ms, 99)
        log(f"submit: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        return submit.job_ids


async def _run(
    config: BenchConfig, submit_h: Harness, h: Harness, fakes: FakeProviders, results: Results
) -> None:
    baseline = SequentialBaseline()
    session = client_session()
    slow = [
        ("discovery", "discovery", SLOW_WORKER_ENV),
        ("enrichment", "enrichment", SLOW_WORKER_ENV),
    ]
    try:
        if config.database_url:
            # One database for every stack: submit on the main stack, cancel those jobs
            # (the workers, started next, drop their queued tasks), then add the workers.
            job_ids = await _submit(config, h, results)
            log(f"submit: cancelling the {len(job_ids)} jobs submitted")
            await cancel_jobs(jobs_pb2_grpc.JobServiceStub(h.channel), job_ids)
            await h.start_workers(slow)
            await h.wait_drained()
        else:
            # A throwaway stack takes the jobs submitted away with it (faster than
            # cancelling them); the main stack starts while it stops.
            await _submit(config, submit_h, results)
            await submit_h.close()
            await asyncio.gather(asyncio.to_thread(submit_h.stop), h.start(slow))

        async with _scenario(results, "speedup"):
            walls = await run_stack_campaigns(h.channel, config.speedup_runs)

        async with _scenario(results, "progress"):
            # The sequential side of the speedup runs meanwhile, in a process of its own: it
            # only sleeps, and its start-up falls in the progress warm-up.
            await baseline.start()
            await h.start_web()
            grpc_run, sse_run = await run_progress(
                h.channel,
                config.progress_s,
                config.progress_inflight,
                sse_follow(session, h.web_url),
            )
            results.progress, results.sse_progress = grpc_run, sse_run
            for name, run in (("progress", grpc_run), ("sse progress", sse_run)):
                if run is not None:
                    p50, p99 = percentile(run.latencies_ms, 50), percentile(run.latencies_ms, 99)
                    count = len(run.latencies_ms)
                    log(f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({count} updates)")
            h.check_alive()
            await h.wait_drained()

        async with _scenario(results, "scaleout"):
            scale_env = {
                **SLOW_WORKER_ENV,
                "ENRICHMENT_CONCURRENCY": str(SCALEOUT_ENRICHMENT_CONCURRENCY),
            }
            await h.stop_workers(["enrichment"])
            await h.start_workers([("enrichment", "enrichment", scale_env)])

            async def add_second_worker() -> None:
                await h.start_workers([("enrichment", "enrichment-2", scale_env)])

            results.scaleout = await run_scaleout(
                h, config.scaleout_phase_s, config.scaleout_inflight, add_second_worker
            )
            h.check_alive()
        results.speedup = SpeedupResult(walls, await baseline.result())

        await h.stop_workers(["discovery", "enrichment", "enrichment-2"])
        async with _scenario(results, "watchers"):
            # The campaigns stay queued while the streams open; then workers of the
            # scenario's own (300 ms a call) run them, and are stopped after.
            stub = jobs_pb2_grpc.JobServiceStub(h.channel)
            workers = [(name, name, WORKER_ENV) for name in ("discovery", "enrichment")]

            async def start_watched_workers() -> None:
                await h.start_workers(workers)

            watchers, job_ids = await run_watchers(
                h,
                start_watched_workers,
                leads=QUICK_LEADS if config.quick else LEADS,
                limit_s=QUICK_LIMIT_S if config.quick else LIMIT_S,
            )
            results.watchers = watchers
            p99 = percentile(watchers.latencies_ms, 99)
            log(
                f"watchers: {watchers.opened} of {watchers.streams} open, jobs RSS "
                f"{watchers.rss_mb:.1f} MB, update p99 {p99:.0f} ms, "
                f"endings: {watchers.endings_line()}"
            )
            for error in watchers.errors:
                log(f"watchers: {error}")
            h.check_alive()
            await cancel_jobs(stub, job_ids)
            await h.wait_drained()
            await h.stop_workers(["discovery", "enrichment"])
            # A fresh jobs service for what follows: 10,000 streams leave its heap grown
            # (about 430 MB), which would weigh on the throughput figures and its RSS. The
            # web process goes with it (its channel would wait out gRPC's reconnect backoff).
            await h.stop_web()
            await h.restart([("jobs", "jobs", {})])
            await h.start_web()

        async with _scenario(results, "grpc_only"):
            # The same streams and snapshots on a bare grpc.aio server: the floor
            # the watchers figures read against (bench/grpc_only.py).
            if watchers.opened:
                results.grpc_only = go = await run_grpc_only(replay(watchers.moments))
                log(summary(go))

        async with _scenario(results, "sse_streams"):
            stub = jobs_pb2_grpc.JobServiceStub(h.channel)
            sampler = h.sampler(["jobs", WEB])
            streams, job_ids = await run_sse_streams(
                stub, session, h.web_url, sampler, config.sse_streams, config.sse_stream_jobs
            )
            results.sse_streams = streams
            log(
                f"sse streams: {streams.opened} of {streams.requested} open in "
                f"{streams.open_s:.1f}s, web RSS {streams.rss_mb:.1f} MB "
                f"({streams.idle_rss_mb:.1f} MB before)"
            )
            for error in streams.errors:
                log(f"sse streams: {error}")
            h.check_alive()
            await cancel_jobs(stub, job_ids)

        fast = [("discovery", "discovery", FAST_WORKER_ENV)]
        await asyncio.gather(
            h.stop_web(),
            h.start_workers([*fast, ("enrichment", "enrichment", FAST_WORKER_ENV)]),
        )
        await h.wait_drained()

        async with _scenario(results, "throughput"):
            # Schedules fire meanwhile (their lateness under this load), deleted after it.
            schedules = ScheduleLoad(h.channel, h.stack.database_url)
            await schedules.start()
            try:
                results.throughput = tp = await run_throughput(
                    h, config.throughput_s, config.throughput_inflight
                )
            finally:
                results.schedules = sl = await schedules.stop()
            log(f"throughput: {tp.campaigns_per_s:.1f} campaigns/s, {tp.leads_per_s:.1f} leads/s")
            lateness = sl.figures()
            log(
                f"schedules: {len(sl.lateness_ms)} fires, lateness p50 "
                f"{lateness['schedule_lateness_p50_ms']} ms, "
                f"p99 {lateness['schedule_lateness_p99_ms']} ms"
            )
            h.check_alive()
            await h.wait_drained()

        async with _scenario(results, "loaded"):
            # Campaigns at 70% of the rate just measured: live updates under real load.
            if results.throughput is not None and results.throughput.campaigns_per_s > 0:
                results.loaded = ld = await run_loaded(
                    h, config.throughput_s / 2, results.throughput.campaigns_per_s
                )
                log(
                    f"loaded: {ld.achieved_per_s:.1f} campaigns/s of {ld.offered_per_s:.1f} "
                    f"offered, progress p50 {ld.p50_ms:.2f} ms, p99 {ld.p99_ms:.2f} ms"
                )
                h.check_alive()
                await h.wait_drained()

        async with _scenario(results, "bus_only"):
            # The same campaigns on the bus alone, while the stack idles: what every figure
            # reads against (bench/bus_only.py).
            results.bus_only = bo = await run_bus_only(
                config.throughput_s, config.throughput_inflight
            )
            log(f"bus only: {bo.campaigns_per_s:.1f} campaigns/s")

        async with _scenario(results, "webhooks"):
            results.webhooks = wh = await run_webhooks(h.channel, 50 if config.quick else 200)
            log(f"webhooks: p99 {wh.figures()['webhook_p99_ms']} ms, {wh.missing} missing")
            h.check_alive()
            await h.wait_drained()

        async with _scenario(results, "observability"):
            results.observability = ob = await run_observability(
                h, config.observability_s, config.throughput_inflight
            )
            log(f"observability: on / off {ob.ratio:.3f}")

        async with _scenario(results, "replicas"):
            # Two jobs replicas sharing the report partitions, against one (docs/capacity.md).
            results.replicas = rp = await run_replicas(
                h, config.observability_s, config.throughput_inflight
            )
            log(
                f"replicas: two jobs replicas' CPU a campaign {rp.cpu_ratio:.3f} of one's, "
                f"{rp.bad_campaigns} campaigns not completed with all their leads"
            )

        async with _scenario(results, "waterfall"):
            # Two stacks and fakes of their own (Hunter alone, then the default waterfall).
            results.waterfall = wf = await run_waterfall()
            for line in wf.lines():
                log(f"  {line}")
            log(
                f"waterfall: cost per verified email {wf.ratio:.3f} of Hunter alone's, "
                f"{wf.waterfall.verified} verified emails against {wf.hunter_only.verified}"
            )

        async with _scenario(results, "ratelimit"):
            await h.stop_workers(["enrichment"])
            fakes.start()
            fake_env = fakes.env()
            hunter_env = {
                **FAST_WORKER_ENV,
                "HUNTER_API_KEY": fake_env["HUNTER_API_KEY"],
                "HUNTER_BASE_URL": fake_env["HUNTER_BASE_URL"],
                "RATE_LIMIT_HUNTER_RPS": f"{config.ratelimit_rps:g}",
                "RATE_LIMIT_HUNTER_BURST": str(config.ratelimit_burst),
            }
            await h.start_workers([("enrichment", "enrichment", hunter_env)])
            fakes.hunter.set_rate_limit(config.ratelimit_rps, config.ratelimit_burst)
            results.ratelimit = rl = await run_ratelimit(
                h, fakes.hunter, config.ratelimit_s, config.ratelimit_inflight
            )
            log(f"rate limit: {rl.utilization:.3f} of {rl.rps:g}/s, {rl.rate_limited} 403s")
            h.check_alive()

        async with _scenario(results, "estimate"):
            # A stack and fakes of its own: real adapters, the cache on, one at a time.
            results.estimate = est = await estimate_on_own_stack(campaign_count(config.quick))
            f = est.figures()
            log(
                f"estimate: p50 error {f['estimate_p50_error']}, in range "
                f"{f['estimate_in_range_ratio']}, {f['estimate_provider_calls']} provider calls"
            )

        async with _scenario(results, "large_tables"):
            # PostgreSQL only (BENCH_DATABASE_URL): a database and a stack of its own.
            results.large_tables = lt = await run_large_tables(config)
            if lt.skipped:
                log(f"large tables: skipped, {lt.skipped}")
    finally:
        await session.close()
        await baseline.aclose()
        await submit_h.close()
        await h.close()


def main() -> int:
    config = BenchConfig.from_env()
    # Before any process starts: the web process inherits the limit.
    raise_fd_limit(config.sse_streams + FDS_SPARE)
    # SIGTERM and SIGHUP stop the bench like Ctrl-C, through the finally blocks; SIGINT too
    # when started with it ignored (in the background of a script).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    database = "PostgreSQL (BENCH_DATABASE_URL)" if config.database_url else "SQLite"
    results = Results(quick=config.quick, database=database)
    submit_harness, harness = Harness(config), Harness(config)
    fakes = FakeProviders()
    log(f"{'quick' if config.quick else 'full'} run")
    code = 0
    try:
        asyncio.run(_run(config, submit_harness, harness, fakes, results))
    except KeyboardInterrupt:
        results.error, code = "interrupted", 130
    except Exception as exc:
        traceback.print_exc()
        results.error, code = f"{type(exc).__name__}: {exc}", 1
        for h in (submit_harness, harness):
            if h.stack.nats.pid is not None:  # started: its logs tell what went wrong
                print(h.stack.log_tails(20), file=sys.stderr)
    finally:
        log("stopping the stack")
        submit_harness.stop()
        harness.stop()
        fakes.stop()
    print(results.table(), flush=True)
    results.write_file()
    print(results.json_line(), flush=True)  # the very last line of the output
    return code
