"""The results: the table for people and the JSON line (and file) for machines."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.bus_only import BusOnlyResult
from bench.config import SCALEOUT_ENRICHMENT_CONCURRENCY
from bench.estimate import EstimateResult
from bench.grpc_only import GrpcOnlyResult
from bench.harness import POSTGRES
from bench.large_tables import TARGET_P99_MS, LargeTablesResult
from bench.loaded import LoadedResult
from bench.observability import RECEIVER, SCRAPE_INTERVAL_S, ObservabilityResult
from bench.progress import ProgressResult
from bench.ratelimit import RatelimitResult
from bench.replicas import ReplicasResult, replicas_figures
from bench.scaleout import ScaleoutResult
from bench.schedules import ScheduleResult
from bench.speedup import SpeedupResult
from bench.sse import SseStreamsResult
from bench.stats import percentile, rounded
from bench.submit import SubmitResult
from bench.throughput import ThroughputResult
from bench.watchers import WatchersResult
from bench.waterfall import WaterfallResult
from bench.webhooks import WebhookResult

ESTIMATE_KEYS = ("estimate_p50_error", "estimate_in_range_ratio", "estimate_provider_calls")
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "latest.json"

# The targets (2-core machine, SQLite): figure -> (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "submit_p99_ms": ("<=", 10),
    "progress_p99_ms": ("<=", 20),
    "sse_streams_1k_rss_mb": ("<=", 200),
    # 10,000 WatchJob streams on one jobs replica (bench/watchers.py).
    "watchers_10k_rss_mb": ("<=", 250),
    "watchers_10k_update_p99_ms": ("<=", 100),
    "watchers_10k_incomplete": ("<=", 0),
    "campaigns_per_s": (">=", 100),
    "observability_overhead": (">=", 0.95),  # at most 5% of the throughput lost
    # Two jobs replicas sharing the reports (bench/replicas.py): no dearer than one.
    "replicas_2_jobs_cpu_ratio": ("<=", 1.0),
    "replicas_2_bad_campaigns": ("<=", 0),
    "speedup_vs_sequential": (">=", 5),
    "scaleout_2x": (">=", 1.8),
    "ratelimit_utilization": (">=", 0.9),
    "ratelimit_429s": ("<=", 0),
    "webhook_p99_ms": ("<=", 500),
    "schedule_lateness_p99_ms": ("<=", 1000),
    "estimate_p50_error": ("<=", 0.15),
    "estimate_in_range_ratio": (">=", 0.8),
    "estimate_provider_calls": ("<=", 0),
    "cost_per_verified_email_ratio": ("<=", 0.6),
    "rss_mb_jobs": ("<=", 150),
    "rss_mb_discovery": ("<=", 150),
    "rss_mb_enrichment": ("<=", 150),
    # PostgreSQL, 1,000,000 jobs and 10,000,000 leads (bench/large_tables.py).
    "large_listjobs_p99_ms": ("<=", TARGET_P99_MS),
    "large_getjob_p99_ms": ("<=", TARGET_P99_MS),
    "large_listleads_p99_ms": ("<=", TARGET_P99_MS),
}
# Targets relative to another figure: figure -> (the other, most it may exceed it by).
RELATIVE_TARGETS: dict[str, tuple[str, float]] = {
    "sse_progress_p99_ms": ("progress_p99_ms", 10),
    "hunter_only_verified_emails": ("waterfall_verified_emails", 0),
}
# Targets as a multiple of another figure: figure -> (the other, most times it).
RATIO_TARGETS: dict[str, tuple[str, float]] = {
    "progress_loaded_p99_ms": ("progress_p99_ms", 3),  # live updates under 70% load
}


@dataclass
class Results:
    quick: bool
    database: str
    submit: SubmitResult | None = None
    progress: ProgressResult | None = None
    sse_progress: ProgressResult | None = None
    sse_streams: SseStreamsResult | None = None
    watchers: WatchersResult | None = None
    throughput: ThroughputResult | None = None
    bus_only: BusOnlyResult | None = None
    grpc_only: GrpcOnlyResult | None = None
    loaded: LoadedResult | None = None
    observability: ObservabilityResult | None = None
    replicas: ReplicasResult | None = None
    speedup: SpeedupResult | None = None
    scaleout: ScaleoutResult | None = None
    ratelimit: RatelimitResult | None = None
    webhooks: WebhookResult | None = None
    schedules: ScheduleResult | None = None
    waterfall: WaterfallResult | None = None
    estimate: EstimateResult | None = None
    large_tables: LargeTablesResult | None = None
    timings: dict[str, float] = field(default_factory=dict)  # scenario -> wall seconds
    error: str = ""

    def figures(self) -> dict[str, float | None]:
        """Every figure under its JSON key; None for what was not measured."""
        nan = math.nan
        s, p, t = self.submit, self.progress, self.throughput
        sp, so, rl = self.speedup, self.scaleout, self.ratelimit
        sse, st, ob = self.sse_progress, self.sse_streams, self.observability
        sl, bo = self.schedules, self.bus_only
        rss = t.peak_rss_mb if t else {}
        return {
            "submit_p50_ms": rounded(percentile(s.latencies_ms, 50) if s else nan),
            "submit_p99_ms": rounded(percentile(s.latencies_ms, 99) if s else nan),
            "progress_p50_ms": rounded(percentile(p.latencies_ms, 50) if p else nan),
            "progress_p99_ms": rounded(percentile(p.latencies_ms, 99) if p else nan),
            "sse_progress_p50_ms": rounded(percentile(sse.latencies_ms, 50) if sse else nan),
            "sse_progress_p99_ms": rounded(percentile(sse.latencies_ms, 99) if sse else nan),
            "sse_streams_1k_rss_mb": rounded(st.rss_mb if st and st.opened else nan, 1),
            "sse_streams_open": st.opened if st else None,
            **_watchers_figures(self.watchers),
            **_grpc_only_figures(self.grpc_only),
            "campaigns_per_s": rounded(t.campaigns_per_s if t else nan),
            "leads_per_s": rounded(t.leads_per_s if t else nan),
            "bus_only_campaigns_per_s": rounded(bo.campaigns_per_s if bo else nan),
            "progress_loaded_p50_ms": rounded(self.loaded.p50_ms if self.loaded else nan),
            "progress_loaded_p99_ms": rounded(self.loaded.p99_ms if self.loaded else nan),
            "loaded_campaigns_per_s": rounded(self.loaded.achieved_per_s if self.loaded else nan),
            **_cpu_figures(t),
            "observability_overhead": rounded(ob.ratio if ob else nan, 3),
            "throughput_obs_on_campaigns_per_s": rounded(ob.on_campaigns_per_s if ob else nan),
            **replicas_figures(self.replicas),
            "speedup_vs_sequential": rounded(sp.speedup if sp else nan),
            "scaleout_2x": rounded(so.ratio if so else nan),
            "ratelimit_utilization": rounded(rl.utilization if rl else nan, 3),
            "ratelimit_429s": rl.rate_limited if rl else None,
            "webhook_p99_ms": rounded(
                percentile(self.webhooks.latencies_ms, 99) if self.webhooks else nan
            ),
            "schedule_lateness_p50_ms": rounded(percentile(sl.lateness_ms, 50) if sl else nan),
            "schedule_lateness_p99_ms": rounded(percentile(sl.lateness_ms, 99) if sl else nan),
            "rss_mb_jobs": rounded(rss.get("jobs", nan), 1),
            "rss_mb_discovery": rounded(rss.get("discovery", nan), 1),
            "rss_mb_enrichment": rounded(rss.get("enrichment", nan), 1),
            **_waterfall_figures(self.waterfall),
            **(self.estimate.figures() if self.estimate else dict.fromkeys(ESTIMATE_KEYS)),
            **(self.large_tables or LargeTablesResult()).figures(),
        }

    def json_line(self) -> str:
        return json.dumps(self.figures(), separators=(", ", ": "))

    def write_file(self, path: Path = RESULTS_FILE) -> None:
        """The JSON line's object to ``path``, and where it came from beside it
        (``<name>.meta.json``)."""
        meta = {
            **machine(),
            "quick": self.quick,
            "database": self.database,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "error": self.error or None,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.figures(), indent=2) + "\n")
        path.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    def table(self) -> str:
        m = machine()
        mode = "quick" if self.quick else "full"
        figures = self.figures()
        w = max(24, *(len(key) + 1 for key in figures))
        lines = [
            f"prospect bench ({mode}) on {self.database}: {m['cpus']} CPUs, {m['cpu']}, "
            f"Python {m['python']}, {m['os']}",
            "",
            f"  {'figure':<{w}}{'value':>10}   {'target':<10}",
            f"  {'-' * w}{'-' * 10}   {'-' * 10}",
        ]
        for key, value in figures.items():
            shown = "-" if value is None else f"{value:g}"
            target = ""
            if key in TARGETS:
                op, bound = TARGETS[key]
                met = value is not None and (value <= bound if op == "<=" else value >= bound)
                target = f"{op} {bound:g}  {'ok' if met else 'MISSED'}"
            elif key in RELATIVE_TARGETS:
                other, margin = RELATIVE_TARGETS[key]
                ref = figures.get(other)
                if ref is not None:
                    met = value is not None and value <= ref + margin
                    verdict = "ok" if met else "MISSED"
                    target = f"<= {ref + margin:g}  {verdict} ({other} + {margin:g})"
            elif key in RATIO_TARGETS:
                other, times = RATIO_TARGETS[key]
                ref = figures.get(other)
                if ref is not None:
                    met = value is not None and value <= ref * times
                    verdict = "ok" if met else "MISSED"
                    target = f"<= {ref * times:g}  {verdict} ({other} x {times:g})"
            lines.append(f"  {key:<{w}}{shown:>10}   {target}")
        lines += ["", *self.details()]
        if self.timings:
            spent = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
            lines.append(f"  time: {spent}")
        if self.error:
            lines.append(f"  FAILED: {self.error}")
        return "\n".join(lines)

    def details(self) -> list[str]:
        out = []
        if s := self.submit:
            out.append(
                f"  submit: {len(s.latencies_ms)} submits from {s.clients} clients in "
                f"{s.wall_s:.1f}s ({s.per_s:.0f}/s), jobs service alone; "
                f"max {max(s.latencies_ms):.1f} ms"
            )
            out.append(f"    CPU (cores busy): {_cores(s.cpu_cores)}")
        if p := self.progress:
            out.append(
                f"  progress: {len(p.latencies_ms)} stamped updates from {p.campaigns} "
                f"campaigns followed with WatchJob (10 leads, 300 ms a call, {p.inflight} "
                f"in flight{', every other one followed over SSE' if self.sse_progress else ''})"
            )
        if sse := self.sse_progress:
            out.append(
                f"  SSE progress: {len(sse.latencies_ms)} stamped events from {sse.campaigns} "
                f"campaigns followed over the web process's event stream, at the same time"
            )
        if st := self.sse_streams:
            out.append(
                f"  SSE streams: {st.opened} of {st.requested} open over {st.jobs} queued jobs "
                f"(first events in {st.open_s:.1f}s; {st.failed} failed, {st.dropped} dropped); "
                f"web RSS {st.idle_rss_mb:.1f} MB before, {st.rss_mb:.1f} MB with them "
                f"(~{st.kb_per_stream:.0f} KB a stream), peak {st.peak_rss_mb:.1f} MB; "
                f"jobs service peak {st.jobs_peak_rss_mb:.1f} MB"
            )
            out.append(f"    CPU while opening (cores busy): {_cores(st.cpu_cores)}")
        if wa := self.watchers:
            out += _watchers(wa)
        if go := self.grpc_only:
            out += _grpc_only(go, self.watchers)
        if t := self.throughput:
            out.append(
                f"  throughput: {t.window_s:.1f}s steady state, {t.completed} campaigns "
                f"completed ({t.not_completed} not), submit-to-done p50 {t.campaign_p50_s:.2f}s; "
                f"progress under this load p50 {t.progress_p50_ms:.1f} ms, "
                f"p99 {t.progress_p99_ms:.1f} ms"
            )
            out.append(
                f"    CPU in steady state (cores busy): {_cores(t.cpu_cores)}; other programs "
                f"on the machine {t.others_cores:.2f}"
            )
            per = ", ".join(f"{name} {ms:.2f}" for name, ms in t.cpu_ms_per_campaign().items())
            out.append(f"    CPU ms a campaign: {per or '-'}")
        if ld := self.loaded:
            out.append(
                f"  loaded: campaigns offered at {ld.offered_per_s:.1f}/s (70% of throughput), "
                f"{ld.achieved_per_s:.1f}/s completed, at most {ld.most_inflight} in flight, "
                f"{ld.errors} errors; progress p50 {ld.p50_ms:.2f} ms, p99 {ld.p99_ms:.2f} ms "
                f"over {len(ld.latencies_ms)} updates"
            )
        if bo := self.bus_only:
            out += _bus_only(bo, t)
        if sl := self.schedules:
            out.append(
                f"  schedules: {sl.schedules} firing every 1-2 s during throughput "
                f"({sl.window_s:.1f}s, SCHEDULER_POLL_S default): {len(sl.lateness_ms)} "
                f"fires, lateness (fire time to job made) max "
                f"{max(sl.lateness_ms, default=math.nan):.1f} ms"
            )
        if ob := self.observability:
            out += _observability(ob)
        if rp := self.replicas:
            out += rp.lines()
        if sp := self.speedup:
            walls = ", ".join(f"{w:.2f}" for w in sp.stack_walls_s)
            out.append(
                f"  speedup: stack {sp.stack_wall_s:.2f}s (runs: {walls}), sequential "
                f"{sp.sequential.wall_s:.2f}s ({sp.sequential.calls} calls, "
                f"{sp.sequential.leads} leads)"
            )
        if so := self.scaleout:
            out.append(
                f"  scale-out: {so.one_worker_leads_per_s:.1f} leads/s with one enrichment "
                f"worker, {so.two_workers_leads_per_s:.1f} with two "
                f"(ENRICHMENT_CONCURRENCY={SCALEOUT_ENRICHMENT_CONCURRENCY} each, 300 ms a call)"
            )
        if rl := self.ratelimit:
            out.append(
                f"  rate limit: fake Hunter at {rl.rps:g}/s (burst {rl.burst}): "
                f"{rl.achieved_rps:.2f}/s in steady state, {rl.requests} requests, "
                f"{rl.rate_limited} rate-limit answers (Hunter's 403)"
            )
        if self.large_tables is not None:
            out += self.large_tables.lines()
        return out


def _watchers_figures(wa: WatchersResult | None) -> dict[str, float | None]:
    """10,000 WatchJob streams (bench/watchers.py): the jobs RSS with all open (the RSS,
    not the growth, as sse_streams_1k_rss_mb), the report-to-update p99 over every stream,
    and the streams that did not end on their job's terminal snapshot."""
    if wa is None:
        keys = ("watchers_10k_rss_mb", "watchers_10k_update_p99_ms", "watchers_10k_incomplete")
        return dict.fromkeys(keys)
    return {
        "watchers_10k_rss_mb": rounded(wa.rss_mb if wa.opened else math.nan, 1),
        "watchers_10k_update_p99_ms": rounded(percentile(wa.latencies_ms, 99)),
        "watchers_10k_incomplete": wa.incomplete,
    }


def _watchers(wa: WatchersResult) -> list[str]:
    return [
        f"  watchers: {wa.opened} of {wa.streams} WatchJob streams open over {wa.jobs} queued "
        f"jobs on {wa.channels} connections (first updates in {wa.open_s:.1f}s); jobs RSS "
        f"{wa.idle_rss_mb:.1f} MB before, {wa.rss_mb:.1f} MB with them (the figure; "
        f"~{wa.kb_per_stream:.0f} KB a stream), peak {wa.peak_rss_mb:.1f} MB",
        f"    then {wa.jobs} campaigns of {wa.leads} leads (300 ms a call) in {wa.run_s:.1f}s: "
        f"{len(wa.latencies_ms)} stamped updates, report to update p50 "
        f"{percentile(wa.latencies_ms, 50):.0f} ms, p99 {percentile(wa.latencies_ms, 99):.0f} "
        f"ms; streams ended: {wa.endings_line()}",
        f"    CPU (cores busy) opening: {_cores(wa.open_cpu)}; all open and quiet: "
        f"{_cores(wa.quiet_cpu)}; campaigns running: {_cores(wa.run_cpu)}, other programs "
        f"on the machine {wa.others_cores:.2f}",
    ]


def _grpc_only_figures(go: GrpcOnlyResult | None) -> dict[str, float | None]:
    """The watchers scenario's streams and snapshots on a bare grpc.aio server
    (bench/grpc_only.py): the floor the watchers figures read against."""
    if go is None:
        keys = (
            "grpc_only_watchers_10k_rss_mb",
            "grpc_only_watchers_10k_update_p99_ms",
            "grpc_only_cpu_us_per_message",
        )
        return dict.fromkeys(keys)
    return {
        "grpc_only_watchers_10k_rss_mb": rounded(go.rss_mb if go.opened else math.nan, 1),
        "grpc_only_watchers_10k_update_p99_ms": rounded(percentile(go.latencies_ms, 99)),
        "grpc_only_cpu_us_per_message": rounded(go.cpu_us_per_message, 1),
    }


def _grpc_only(go: GrpcOnlyResult, wa: WatchersResult | None) -> list[str]:
    than = ""
    if wa is not None and wa.opened:
        than = f" (the jobs service: ~{wa.kb_per_stream:.0f} KB)"
    lat = go.latencies_ms
    return [
        f"  grpc only: the same {go.opened} streams on a bare grpc.aio server: RSS "
        f"{go.idle_rss_mb:.1f} MB before, {go.rss_mb:.1f} MB with them "
        f"(~{go.kb_per_stream:.0f} KB a stream{than}); the watchers' {go.snapshots} "
        f"snapshots replayed over {go.send_s:.1f}s, {len(lat)} messages: "
        f"p50 {percentile(lat, 50):.0f} ms, p99 {percentile(lat, 99):.0f} ms, server CPU "
        f"{go.cpu_us_per_message:.0f} us a message",
    ]


def _waterfall_figures(wf: WaterfallResult | None) -> dict[str, float | None]:
    """The email waterfall against Hunter alone (bench/waterfall.py)."""
    if wf is None:
        return dict.fromkeys(
            ("cost_per_verified_email_ratio", "waterfall_verified_emails",
             "hunter_only_verified_emails", "waterfall_cost_per_verified_email",
             "hunter_only_cost_per_verified_email"),
        )  # fmt: skip
    return {
        "cost_per_verified_email_ratio": rounded(wf.ratio, 3),
        "waterfall_verified_emails": wf.waterfall.verified,
        "hunter_only_verified_emails": wf.hunter_only.verified,
        "waterfall_cost_per_verified_email": rounded(wf.waterfall.per_verified_micros / 1e6, 5),
        "hunter_only_cost_per_verified_email": rounded(wf.hunter_only.per_verified_micros / 1e6, 5),
    }


# Processes of the throughput scenario whose CPU per campaign is a figure of its own.
CPU_KEYS = {
    "jobs": "jobs_cpu_ms_per_campaign",
    "discovery": "discovery_cpu_ms_per_campaign",
    "enrichment": "enrichment_cpu_ms_per_campaign",
    "nats-server": "nats_cpu_ms_per_campaign",
    POSTGRES: "postgres_cpu_ms_per_campaign",  # a PostgreSQL server on this machine
}


def _cpu_figures(t: ThroughputResult | None) -> dict[str, float | None]:
    """CPU milliseconds each process spent per campaign completed in the throughput
    scenario's steady state (its cores busy over the campaigns a second): unlike a rate,
    this carries from machine to machine (issue 19 halves the jobs service's)."""
    per = t.cpu_ms_per_campaign() if t else {}
    return {key: rounded(per.get(name, math.nan)) for name, key in CPU_KEYS.items()}


def _bus_only(bo: BusOnlyResult, t: ThroughputResult | None) -> list[str]:
    share = ""
    if t is not None and bo.campaigns_per_s > 0:
        share = (
            f"; prospect's campaigns_per_s is {t.campaigns_per_s / bo.campaigns_per_s:.1%} of it"
        )
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in bo.cpu_ms_per_campaign().items())
    return [
        f"  bus only: the throughput campaigns' messages on JetStream alone (a process per "
        f"role, a nats-server of its own, {bo.inflight} in flight): {bo.campaigns_per_s:.1f} "
        f"campaigns/s over {bo.window_s:.1f}s steady state, {bo.completed} completed, "
        f"task-to-done p50 {bo.campaign_p50_ms:.1f} ms{share}",
        f"    CPU ms a campaign: {cpu or '-'}; other programs on the machine "
        f"{bo.others_cores:.2f} cores",
    ]


def _observability(ob: ObservabilityResult) -> list[str]:
    got = ob.received
    on_runs = ob.runs(on=True)
    completed = sum(run.completed for run in on_runs)
    spans = ", ".join(
        f"{service.removeprefix('prospect-')} {n / max(1, completed):.1f}"
        for service, n in sorted(got.by_service().items())
    )
    samples = ", ".join(f"{label} {n}" for label, n in ob.samples.items())
    lost = []
    if ob.dropped:
        lost.append(f"span queue full (spans dropped) in {', '.join(ob.dropped)}")
    if ob.export_failures:
        lost.append(f"failed exports in {', '.join(ob.export_failures)}")
    off_cpu, on_cpu = ob.cpu_ms_per_campaign(on=False), ob.cpu_ms_per_campaign(on=True)
    cpu = ", ".join(
        f"{name} {off_cpu.get(name, 0.0):.2f} -> {ms:.2f}" for name, ms in on_cpu.items()
    )
    phases = ", ".join(
        f"{'on' if on else 'off'} {run.campaigns_per_s:.1f} ({run.window_s:.1f}s)"
        for on, run in ob.phases
    )
    others = ", ".join(f"{run.others_cores:.2f}" for _, run in ob.phases)
    return [
        f"  observability: metrics and tracing on {ob.on_campaigns_per_s:.1f}, off "
        f"{ob.off_campaigns_per_s:.1f} campaigns/s: {ob.ratio:.3f}; phases (steady window; "
        f"processes restarted before each): {phases}",
        f"    traces at 100% to a local OTLP/HTTP receiver: {got.total} spans in "
        f"{got.requests} exports ({got.bytes / 1e6:.1f} MB, {got.bad} refused); spans a "
        f"completed campaign: {spans}; {'; '.join(lost) or 'no span dropped'}",
        f"    /metrics scraped {ob.scrapes} times (every {SCRAPE_INTERVAL_S:g} s and at the "
        f"ends of each on phase; {ob.scrape_errors} failed), samples: {samples}",
        f"    CPU ms a campaign, off -> on ({RECEIVER}: the receiver): {cpu}; other "
        f"programs on the machine in each phase: {others} cores",
    ]


def _cores(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {cores:.2f}" for name, cores in cpu.items()) or "-"


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count() or 0,
        "cpu": cpu,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
