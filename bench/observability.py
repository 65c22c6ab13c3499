"""What metrics and tracing cost: the throughput load with both on against both off.

After the throughput scenario, on its drained stack, five phases of ``seconds`` each, with
the jobs service and the two sandbox workers freshly restarted before each: off, on, off,
on, off. ``observability_overhead`` is the on phases' campaigns per second over the off
phases' (each side's completions over its steady windows). The phases alternate and are
symmetric in time, so a steady drift over the run (the database growing, the machine's
neighbours) weighs on both sides alike, and a burst of noise in one phase weighs less than
it did with one phase a side; every phase runs processes of the same age (the throughput
scenario's jobs service has served every scenario before it: its figure stays apart). The
report shows every phase's figure: their spread is the noise the ratio carries (on a
shared 2-core VM, identical phases differ by up to ~10%), and the CPU each process spent a
campaign on either side, which that noise moves far less. On means:

- ``METRICS_ADDR`` on a free port for each process, and the bench scraping every
  ``/metrics`` when the phase starts, every :data:`SCRAPE_INTERVAL_S` (as Prometheus would)
  and at its end;
- tracing at 100% (``OTEL_TRACES_SAMPLER=parentbased_always_on``, one trace a campaign)
  over OTLP/HTTP to :mod:`bench.otlp_sink`, a receiver in a process of its own that only
  counts, the batch processor on its defaults (``OTEL_BSP_*`` unset).

Metric objects are recorded into whether or not they are served: ``METRICS_ADDR`` adds the
endpoint and its scrapes, so the recording itself is in both sides and not measured here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from bench.config import FAST_WORKER_ENV, log
from bench.harness import Harness, WorkerSpec
from bench.otlp_sink import OtlpSink, SinkStats
from bench.throughput import SERVICES, ThroughputResult, run_throughput
from services.cli.stack import free_port

SCRAPE_INTERVAL_S = 15.0
RECEIVER = "otlp-receiver"  # the sink's name among the processes sampled


def _specs(env: Mapping[str, str], per_process: bool) -> list[WorkerSpec]:
    """The jobs service and the sandbox workers of the throughput scenario, with ``env`` on
    top (and a metrics port each when ``per_process``)."""

    def own() -> dict[str, str]:
        return {**env, "METRICS_ADDR": f"127.0.0.1:{free_port()}"} if per_process else dict(env)

    return [
        ("jobs", "jobs", own()),
        ("discovery", "discovery", {**FAST_WORKER_ENV, **own()}),
        ("enrichment", "enrichment", {**FAST_WORKER_ENV, **own()}),
    ]


def observability_env(endpoint: str) -> dict[str, str]:
    """Tracing on, every trace sampled, spans to ``endpoint`` (METRICS_ADDR set apart)."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


class Scraper:
    """GETs each of ``urls`` (label -> /metrics URL) now, every ``interval`` seconds and at
    :meth:`stop`, like a Prometheus server; the first round must succeed."""

    def __init__(self, urls: Mapping[str, str], interval: float = SCRAPE_INTERVAL_S) -> None:
        self.urls = dict(urls)
        self.interval = interval
        self.scrapes = 0  # rounds over every URL
        self.errors = 0
        self.samples: dict[str, int] = {}  # label -> samples, last round
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def scrape(self) -> None:
        assert self._session is not None
        for label, url in self.urls.items():
            async with self._session.get(url) as answer:
                answer.raise_for_status()
                text = await answer.text()
            self.samples[label] = sum(
                1 for line in text.splitlines() if line and not line.startswith("#")
            )
        self.scrapes += 1

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.scrape()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors += 1
                log(f"observability: scrape failed: {exc!r}")

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            await self.scrape()
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            try:
                await self.scrape()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors += 1
                log(f"observability: last scrape failed: {exc!r}")
            await self._session.close()
            self._session = None


# The phases, in order: True for on. Symmetric in time, so a steady drift cancels out.
PHASES = (False, True, False, True, False)


def _done(runs: list[ThroughputResult]) -> float:
    """Campaigns completed in ``runs``' steady windows together."""
    return sum(r.campaigns_per_s * r.window_s for r in runs)


def _per_s(runs: list[ThroughputResult]) -> float:
    """Campaigns per second over ``runs``' steady windows together."""
    window = sum(r.window_s for r in runs)
    return _done(runs) / window if window else 0.0


@dataclass
class ObservabilityResult:
    phases: list[tuple[bool, ThroughputResult]]  # (on, its run), in the order they ran
    received: SinkStats
    scrapes: int
    scrape_errors: int
    samples: dict[str, int]  # label -> samples in its /metrics (last scrape)
    dropped: list[str]  # processes whose span queue overflowed (spans dropped)
    export_failures: list[str]  # processes that logged a failed export

    def runs(self, on: bool) -> list[ThroughputResult]:
        return [run for is_on, run in self.phases if is_on == on]

    @property
    def on_campaigns_per_s(self) -> float:
        return _per_s(self.runs(on=True))

    @property
    def off_campaigns_per_s(self) -> float:
        return _per_s(self.runs(on=False))

    @property
    def ratio(self) -> float:
        return self.on_campaigns_per_s / self.off_campaigns_per_s

    def cpu_ms_per_campaign(self, on: bool) -> dict[str, float]:
        """CPU milliseconds each process spent per campaign completed in the steady states
        of the on phases, or of the off phases, together."""
        runs = self.runs(on)
        done = _done(runs)
        if done <= 0:
            return {}
        return {
            name: 1000 * sum(r.cpu_cores.get(name, 0.0) * r.window_s for r in runs) / done
            for name in runs[0].cpu_cores
        }


def _logged(h: Harness, labels: list[str], *needles: str) -> list[str]:
    """The labels whose log (every run of the process) contains one of ``needles``."""
    found = []
    for label in labels:
        text = h.stack.processes[label].log_text()
        if any(needle in text for needle in needles):
            found.append(label)
    return found


async def run_observability(h: Harness, seconds: float, inflight: int) -> ObservabilityResult:
    """The :data:`PHASES`, ``seconds`` each (on a drained stack whose jobs service and
    sandbox workers run with observability off)."""
    sink = OtlpSink()
    off_specs = _specs({}, per_process=False)
    phases: list[tuple[bool, ThroughputResult]] = []
    scrapers: list[Scraper] = []
    try:
        await sink.start()
        others = {RECEIVER: sink.pid}
        on_env = observability_env(sink.endpoint)
        for on in PHASES:
            # Stopping the processes of an on phase flushes their spans to the receiver.
            await h.restart(_specs(on_env, per_process=True) if on else off_specs)
            scraper = None
            if on:
                urls = {label: h.stack.processes[label].metrics_url for label in SERVICES}
                scraper = Scraper(urls)
                scrapers.append(scraper)
                await scraper.start()
            try:
                run = await run_throughput(h, seconds, inflight, others)
            finally:
                if scraper is not None:
                    await scraper.stop()
            log(f"observability {'on' if on else 'off'}: {run.campaigns_per_s:.1f} campaigns/s")
            phases.append((on, run))
            h.check_alive()
            await h.wait_drained()
        received = await sink.stats()  # the last phase is off: every on process has stopped
    finally:
        await sink.aclose()
    labels = list(SERVICES)
    result = ObservabilityResult(
        phases=phases,
        received=received,
        scrapes=sum(scraper.scrapes for scraper in scrapers),
        scrape_errors=sum(scraper.errors for scraper in scrapers),
        samples=dict(scrapers[-1].samples),
        dropped=_logged(h, labels, "Queue full"),
        export_failures=_logged(h, labels, "Failed to export", "Exception while exporting"),
    )
    by_service = received.by_service()
    for label in labels:
        if not by_service.get(f"prospect-{label}"):
            raise RuntimeError(f"observability: no span of {label} reached the receiver")
    log(
        f"observability: on {result.on_campaigns_per_s:.1f}, off {result.off_campaigns_per_s:.1f}"
        f" campaigns/s: {result.ratio:.3f}; {received.total} spans received, "
        f"{result.scrapes} scrapes"
    )
    return result
