"""What metrics and tracing cost: the throughput load with both on against both off.

After the throughput scenario, on its drained stack, three phases, each with the jobs
service and the two sandbox workers freshly restarted: off for ``seconds``, on for twice
that, off again for ``seconds``. ``observability_overhead`` is the on phase's campaigns per
second over the mean of the two off phases': the phases are symmetric in time, so a steady
drift over the run (the database growing) weighs on both sides alike, and every side runs
processes of the same age (the throughput scenario's jobs service has served every
scenario before it: its figure stays apart). The report shows both off figures: their
spread is the noise the ratio carries (on a shared 2-core VM, identical phases differ by up
to ~10%). On means:

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


@dataclass
class ObservabilityResult:
    off_before: ThroughputResult
    on: ThroughputResult
    off_after: ThroughputResult
    received: SinkStats
    scrapes: int
    scrape_errors: int
    samples: dict[str, int]  # label -> samples in its /metrics (last scrape)
    dropped: list[str]  # processes whose span queue overflowed (spans dropped)
    export_failures: list[str]  # processes that logged a failed export

    @property
    def off_campaigns_per_s(self) -> float:
        return (self.off_before.campaigns_per_s + self.off_after.campaigns_per_s) / 2

    @property
    def ratio(self) -> float:
        return self.on.campaigns_per_s / self.off_campaigns_per_s

    def cpu_ms_per_campaign(self, on: bool) -> dict[str, float]:
        """CPU milliseconds each process spent per campaign completed in the steady state
        of the on phase, or of the two off phases together."""
        runs = [self.on] if on else [self.off_before, self.off_after]
        out: dict[str, float] = {}
        for name in runs[0].cpu_cores:
            core_s = sum(r.cpu_cores.get(name, 0.0) * r.window_s for r in runs)
            done = sum(r.campaigns_per_s * r.window_s for r in runs)
            if done > 0:
                out[name] = 1000 * core_s / done
        return out


def _logged(h: Harness, labels: list[str], *needles: str) -> list[str]:
    """The labels whose log (every run of the process) contains one of ``needles``."""
    found = []
    for label in labels:
        text = h.stack.processes[label].log_text()
        if any(needle in text for needle in needles):
            found.append(label)
    return found


async def run_observability(h: Harness, seconds: float, inflight: int) -> ObservabilityResult:
    """Off for ``seconds``, on for twice that, off for ``seconds`` (on a drained stack whose
    jobs service and sandbox workers run with observability off)."""
    sink = OtlpSink()
    off_specs = _specs({}, per_process=False)
    try:
        await sink.start()
        others = {RECEIVER: sink.pid}
        await h.restart(off_specs)
        off_before = await run_throughput(h, seconds, inflight, others)
        log(f"observability off: {off_before.campaigns_per_s:.1f} campaigns/s")
        h.check_alive()
        await h.wait_drained()

        await h.restart(_specs(observability_env(sink.endpoint), per_process=True))
        urls = {label: h.stack.processes[label].metrics_url for label in SERVICES}
        scraper = Scraper(urls)
        await scraper.start()
        try:
            on = await run_throughput(h, 2 * seconds, inflight, others)
        finally:
            await scraper.stop()
        log(f"observability on: {on.campaigns_per_s:.1f} campaigns/s")
        h.check_alive()
        await h.wait_drained()

        # Stopping flushes the spans still queued to the receiver.
        await h.restart(off_specs)
        received = await sink.stats()
        off_after = await run_throughput(h, seconds, inflight, others)
        h.check_alive()
        await h.wait_drained()
    finally:
        await sink.aclose()
    labels = list(SERVICES)
    result = ObservabilityResult(
        off_before=off_before,
        on=on,
        off_after=off_after,
        received=received,
        scrapes=scraper.scrapes,
        scrape_errors=scraper.errors,
        samples=dict(scraper.samples),
        dropped=_logged(h, labels, "Queue full"),
        export_failures=_logged(h, labels, "Failed to export", "Exception while exporting"),
    )
    by_service = received.by_service()
    for label in labels:
        if not by_service.get(f"prospect-{label}"):
            raise RuntimeError(f"observability: no span of {label} reached the receiver")
    log(
        f"observability off again: {off_after.campaigns_per_s:.1f} campaigns/s; on / mean(off) "
        f"{result.ratio:.3f}; {received.total} spans received, {scraper.scrapes} scrapes"
    )
    return result
