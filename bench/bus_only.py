"""The throughput campaign's shape on the bus alone (``bus_only_campaigns_per_s``): what
NATS JetStream and Python clients can carry on this machine, with nothing of prospect's own.

Each campaign is one discovery task, its result naming 10 places, 5 of them made leads:
five enrichment tasks and their five reports; it is done when those five are in. That is
the messages the throughput scenario's campaigns send (:mod:`bench.throughput`), here
without a database, gRPC, snapshots or providers: one process per role, each pulling a
durable consumer in batches, acking what it pulled and publishing protobuf messages
(:mod:`prospect.v1.work_pb2`) to JetStream with a ``Nats-Msg-Id``, the publish acks awaited
together:

- the coordinator (the jobs service's part): publishes discovery tasks, turns each
  discovery result into five enrichment tasks, counts a campaign done on its fifth
  enrichment report and starts another (a closed loop of ``inflight`` campaigns);
- a discovery worker and an enrichment worker: decode a task, publish its report.

They run on a nats-server of their own (auth on, like the stack's, whose users may not
touch other streams), started and stopped here, with prospect's own streams, consumers and
buckets (:func:`services.common.bus.ensure_topology`, one report partition).
The rate is over a steady-state window as in the throughput scenario (after 15% of the
run and the first ``inflight`` completions, until the loop stops); the CPU of each process
is sampled over that window: on a 2-core machine the four processes keep both cores busy,
so the rate is what their CPU per campaign allows. The issue measured this shape at about
1,850 campaigns/s on the bench machine, prospect at about 9% of that: every figure of the
bench reads against this one, measured in the same run.

``python -m bench.bus_only`` runs it alone (``BENCH_QUICK`` for the short length);
``python -m bench.bus_only <role> ...`` is one of its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bench import children
from bench.config import BenchConfig, log
from bench.procstat import Sampler
from bench.stats import percentile
from prospect.v1 import jobs_pb2, work_pb2
from services.cli.stack import NatsServer
from services.common import bus
from services.common.nats_auth import SUPERUSER
from services.common.settings import Settings

DISCOVERY, ENRICHMENT, COORDINATOR = "discovery", "enrichment", "coordinator"
ROLES = (COORDINATOR, DISCOVERY, ENRICHMENT)
# The durable consumer each worker role pulls (prospect's own).
WORKER_CONSUMERS = {DISCOVERY: bus.DISCOVERY_CONSUMER, ENRICHMENT: bus.ENRICHMENT_CONSUMER}
PLACES, LEADS = 10, 5  # a discovery result's places, the leads made of them
FETCH_BATCH = 256  # messages a fetch asks for
FETCH_TIMEOUT_S = 1.0
PUBLISH_CHUNK = 256  # JetStream publishes whose acks are awaited together
WARMUP_SHARE = 0.15  # of the run, never in the steady-state window
READY_TIMEOUT_S = 30.0
NATS_ENV = ("NATS_URL", "NATS_USER", "NATS_PASSWORD")
READY = "ready"
MODULE = "bench.bus_only"


@dataclass
class BusOnlyResult:
    campaigns_per_s: float
    window_s: float
    completed: int  # over the whole run
    inflight: int
    campaign_p50_ms: float  # discovery task published -> fifth enrichment report in
    cpu_cores: dict[str, float] = field(default_factory=dict)  # in the window, by process
    others_cores: float = math.nan  # the machine's busy cores besides those processes

    def cpu_ms_per_campaign(self) -> dict[str, float]:
        """CPU milliseconds each process spent on a campaign, in the window."""
        if not self.campaigns_per_s > 0:
            return {}
        return {name: 1000 * c / self.campaigns_per_s for name, c in self.cpu_cores.items()}


# The processes' side.


async def _connect(name: str) -> NATS:
    """As the services connect (:func:`services.common.bus.connect`), with the NATS
    settings the parent put in the environment."""
    settings = Settings.from_env({k: os.environ[k] for k in NATS_ENV if k in os.environ})
    return await bus.connect(settings, name)


async def _publish_all(js: JetStreamContext, messages: Sequence[tuple[str, Message, str]]) -> None:
    """JetStream-publish each ``(subject, message, msg_id)``, then await the stream's acks
    of up to :data:`PUBLISH_CHUNK` of them together. ``publish_async`` takes each ack on one
    reply subscription: ``publish`` (a request each, its own timeout) awaited in
    ``asyncio.gather`` costs a task and a timer per message, about 15% of the rate here."""
    for i in range(0, len(messages), PUBLISH_CHUNK):
        acks = [
            await js.publish_async(
                subject, message.SerializeToString(), headers={"Nats-Msg-Id": msg_id}
            )
            for subject, message, msg_id in messages[i : i + PUBLISH_CHUNK]
        ]
        await asyncio.gather(*acks)


async def _ack_all(msgs: Sequence[Msg]) -> None:
    """Ack each message: a publish without reply, buffered (one after the other, no task
    each as ``asyncio.gather`` would make)."""
    for msg in msgs:
        await msg.ack()


def _report(task_id: str, job_id: str, attempt: int) -> work_pb2.WorkerReport:
    report = work_pb2.WorkerReport(
        report_id=f"{task_id}.r", job_id=job_id, task_id=task_id, attempt=attempt
    )
    report.published_at.GetCurrentTime()
    return report


def _discovery_report(data: bytes) -> tuple[str, Message, str]:
    task = work_pb2.DiscoveryTask.FromString(data)
    report = _report(task.task_id, task.job_id, task.attempt)
    result = report.discovery_result
    result.businesses_found = PLACES
    place = task.config.business_type.replace(" ", "-")
    for i in range(PLACES):
        result.qualified.append(
            work_pb2.Place(
                place_id=f"{task.job_id}-p{i}",
                name=f"{task.config.business_type} {i}",
                address=f"{i} Main St, {task.config.location}",
                phone="+1 555 0100",
                website=f"https://{place}-{i}.example.com",
                rating=4.5,
                review_count=100 + i,
                business_status="OPERATIONAL",
                types=[place],
                confidence_score=90 - i,
                address_complete=True,
            )
        )
    return bus.events_subject(task.job_id), report, report.report_id


def _enrichment_report(data: bytes) -> tuple[str, Message, str]:
    task = work_pb2.EnrichmentTask.FromString(data)
    report = _report(task.task_id, task.job_id, task.attempt)
    domain = task.place.website.removeprefix("https://")
    report.enrichment_result.CopyFrom(
        work_pb2.EnrichmentResult(
            lead_id=task.lead_id,
            email=f"info@{domain}",
            email_status="valid",
            verified=task.verify_emails,
            email_source="website",
        )
    )
    return bus.events_subject(task.job_id), report, report.report_id


async def _worker(role: str) -> None:
    """Pull tasks, publish their reports, ack the tasks; until killed."""
    handle = _discovery_report if role == DISCOVERY else _enrichment_report
    nc = await _connect(f"bus-only-{role}")
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(WORKER_CONSUMERS[role], bus.WORK_STREAM)
    print(READY, flush=True)
    while True:
        try:
            msgs = await psub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:
            continue
        await _publish_all(js, [handle(msg.data) for msg in msgs])
        await _ack_all(msgs)


class _Coordinator:
    """The jobs service's part: the closed loop, and when each campaign ends."""

    def __init__(self, js: JetStreamContext, inflight: int) -> None:
        self.js = js
        self.inflight = inflight
        self.ids = itertools.count()
        self.awaited: dict[str, int] = {}  # job -> enrichment reports still to come
        self.began: dict[str, float] = {}  # job -> its discovery task published
        self.completions: list[float] = []
        self.walls_ms: list[float] = []

    def new_campaign(self) -> tuple[str, Message, str]:
        n = next(self.ids)
        job_id = f"job-{n}"
        task = work_pb2.DiscoveryTask(
            job_id=job_id,
            campaign_id=f"campaign-{n}",
            config=jobs_pb2.CampaignConfig(
                business_type="coffee shop",
                location=f"Springfield {n}",
                max_results=LEADS,
                verify_emails=True,
            ),
            attempt=1,
            task_id=f"{job_id}.discovery",
        )
        self.began[job_id] = time.monotonic()
        return bus.DISCOVERY_SUBJECT, task, task.task_id

    def on_report(self, data: bytes, more: bool) -> list[tuple[str, Message, str]]:
        """What a report makes published: a discovery result its enrichment tasks, a
        campaign's last enrichment report the next campaign (while ``more``)."""
        report = work_pb2.WorkerReport.FromString(data)
        job_id = report.job_id
        if report.WhichOneof("body") == "discovery_result":
            self.awaited[job_id] = LEADS
            tasks: list[tuple[str, Message, str]] = []
            for i, place in enumerate(report.discovery_result.qualified[:LEADS]):
                task = work_pb2.EnrichmentTask(
                    job_id=job_id,
                    campaign_id=job_id.replace("job-", "campaign-"),
                    lead_id=f"{job_id}-l{i}",
                    place=place,
                    verify_emails=True,
                    attempt=1,
                    task_id=f"{job_id}.e{i}",
                )
                tasks.append((bus.ENRICHMENT_SUBJECT, task, task.task_id))
            return tasks
        self.awaited[job_id] -= 1
        if self.awaited[job_id]:
            return []
        del self.awaited[job_id]
        now = time.monotonic()
        self.completions.append(now)
        self.walls_ms.append(1000 * (now - self.began.pop(job_id)))
        return [self.new_campaign()] if more else []

    async def run(
        self, psub: JetStreamContext.PullSubscription, seconds: float
    ) -> dict[str, float]:
        started = time.monotonic()
        deadline = started + seconds
        await _publish_all(self.js, [self.new_campaign() for _ in range(self.inflight)])
        while time.monotonic() < deadline:
            try:
                msgs = await psub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                continue
            more = time.monotonic() < deadline
            out = [task for msg in msgs for task in self.on_report(msg.data, more)]
            await _publish_all(self.js, out)
            await _ack_all(msgs)
        end = time.monotonic()
        first = (
            self.completions[self.inflight - 1]
            if len(self.completions) >= self.inflight
            else math.inf
        )
        start = max(started + WARMUP_SHARE * seconds, first)
        if end - start < 1.0:
            start = started  # no steady state: over the whole run
        window = [t for t in self.completions if start < t <= end]
        return {
            "start": start,
            "end": end,
            "campaigns_per_s": len(window) / (end - start),
            "completed": len(self.completions),
            "campaign_p50_ms": percentile(self.walls_ms, 50),
        }


async def _coordinate(seconds: float, inflight: int) -> None:
    """Run the loop for ``seconds``; print what it measured as one JSON line."""
    nc = await _connect(f"bus-only-{COORDINATOR}")
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(bus.report_consumer(0), bus.EVENTS_STREAM)
    outcome = await _Coordinator(js, inflight).run(psub, seconds)
    print(json.dumps(outcome), flush=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)


def child_main(argv: Sequence[str]) -> None:
    """``<role>``, or ``coordinator <seconds> <inflight>``."""
    children.exit_with_parent()
    # The client's "disconnected" warning when the coordinator closes is no news.
    logging.basicConfig(level=logging.ERROR)
    role = argv[0]
    if role == COORDINATOR:
        asyncio.run(_coordinate(float(argv[1]), int(argv[2])))
    elif role in (DISCOVERY, ENRICHMENT):
        asyncio.run(_worker(role))
    else:
        raise SystemExit(f"unknown role {role!r}; one of {', '.join(ROLES)}")


# The bench's side.


async def _make_topology(settings: Settings) -> None:
    """prospect's streams, consumers and buckets, made as the jobs service makes them."""
    nc = await bus.connect(settings, "bus-only-setup")
    try:
        await bus.ensure_topology(nc.jetstream(), settings)
    finally:
        await nc.close()


async def run_bus_only(seconds: float, inflight: int) -> BusOnlyResult:
    """Start a nats-server and the three processes, run the loop for ``seconds`` with
    ``inflight`` campaigns, stop them all (on failure too)."""
    with tempfile.TemporaryDirectory(prefix="prospect-bus-only-") as tmp:
        server = NatsServer(Path(tmp) / "nats", superuser=True)
        procs: dict[str, asyncio.subprocess.Process] = {}
        try:
            await asyncio.to_thread(server.start)
            # The environment less any other NATS settings, with this server's.
            nats_env = server.client_env(SUPERUSER)
            env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
            env.update(nats_env)
            await _make_topology(server.settings(report_partitions=1))
            for role in (DISCOVERY, ENRICHMENT):
                procs[role] = await children.spawn(MODULE, env, role)
            for role in (DISCOVERY, ENRICHMENT):
                if (line := await children.line(procs[role], role, READY_TIMEOUT_S)) != READY:
                    raise RuntimeError(f"bus only: the {role} process said {line!r}")
            procs[COORDINATOR] = await children.spawn(
                MODULE, env, COORDINATOR, f"{seconds:g}", str(inflight)
            )
            assert server.pid is not None
            pids = {role: procs[role].pid for role in ROLES}
            sampler = Sampler({**pids, "nats-server": server.pid})
            sampler.start()
            try:
                outcome = json.loads(
                    await children.line(procs[COORDINATOR], COORDINATOR, seconds + 60)
                )
            finally:
                await sampler.stop()
            for role in (DISCOVERY, ENRICHMENT):
                if procs[role].returncode is not None:
                    raise RuntimeError(f"bus only: the {role} process exited during the run")
        finally:
            await children.stop(list(procs.values()))
            await asyncio.to_thread(server.stop)
    start, end = outcome["start"], outcome["end"]
    return BusOnlyResult(
        campaigns_per_s=outcome["campaigns_per_s"],
        window_s=end - start,
        completed=int(outcome["completed"]),
        inflight=inflight,
        campaign_p50_ms=outcome["campaign_p50_ms"],
        cpu_cores=sampler.cpu_share(start, end),
        others_cores=sampler.others_share(start, end),
    )


async def _alone() -> None:
    config = BenchConfig.from_env()
    result = await run_bus_only(config.throughput_s, config.throughput_inflight)
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in result.cpu_ms_per_campaign().items())
    log(
        f"bus only: {result.campaigns_per_s:.1f} campaigns/s over {result.window_s:.1f}s, "
        f"p50 {result.campaign_p50_ms:.1f} ms; CPU ms a campaign: {cpu}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        child_main(args)
    else:
        asyncio.run(_alone())


if __name__ == "__main__":
    main()
