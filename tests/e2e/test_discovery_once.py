"""A discovery task redelivered after its worker was killed does not pay again for the
search its predecessor already got an answer for: the second delivery starts from the
job's memo (services/discovery/memo.py).

Real processes: a nats-server and discovery worker processes against the fake Google, no
jobs service (the test plays it). To kill the first worker at a known point, after its
search was answered but before its task was done, the test answers the worker's reports
itself: the events stream is removed once the worker is ready, and the test acknowledges
the report that says the search is starting and leaves the next one (the first after the
search) unanswered, so the worker is stuck publishing it when ``kill -9`` comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from prospect.v1 import jobs_pb2, work_pb2
from services.cli.stack import NatsServer, ServiceProcess
from services.common import bus
from services.common.nats_auth import SUPERUSER
from services.common.settings import Settings
from tests.fakes import FakeProviders
from tests.nats_helpers import connected

pytestmark = pytest.mark.e2e

JOB_ID = "job_" + "3" * 32
QUERY = "bakery in Killtown"


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=25) as running:
        yield running


@pytest.fixture
def env(nats_server: NatsServer, fakes: FakeProviders) -> dict[str, str]:
    return {
        **fakes.env(),
        **nats_server.client_env(SUPERUSER),
        "ACK_WAIT_S": "2",
        "REPORT_PARTITIONS": "1",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
async def nats(env: dict[str, str]) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    async with connected(Settings.from_env(env)) as running:
        yield running


@contextlib.asynccontextmanager
async def discovery_process(env: dict[str, str], log: Path) -> AsyncIterator[ServiceProcess]:
    """A discovery worker process, ready; stopped on the way out (its log shown on failure)."""
    worker = ServiceProcess("discovery", env, log)
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        yield worker
    except BaseException:
        print(f"\n===== {log} =====\n{worker.log_tail(60)}")
        raise
    finally:
        worker.stop()


def discovery_task() -> work_pb2.DiscoveryTask:
    config = jobs_pb2.CampaignConfig(
        business_type="bakery", location="Killtown", max_results=5, min_confidence_score=0
    )
    return work_pb2.DiscoveryTask(job_id=JOB_ID, campaign_id="c", config=config, attempt=1)


async def result_report(js: JetStreamContext, within: float = 60) -> work_pb2.WorkerReport:
    """Wait for the job's discovery result on the events stream; every report before it
    must carry no money."""
    psub = await js.pull_subscribe_bind(bus.report_consumer(0), bus.EVENTS_STREAM)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                for msg in await psub.fetch(10, timeout=1):
                    await msg.ack()
                    report = work_pb2.WorkerReport.FromString(msg.data)
                    assert not report.intents and not report.charges, report
                    if report.WhichOneof("body") == "discovery_result":
                        return report
    finally:
        await psub.unsubscribe()
    pytest.fail(f"no discovery result in {within:.0f}s")


async def test_a_task_redelivered_after_its_worker_was_killed_pays_for_the_search_once(
    tmp_path: Path,
    env: dict[str, str],
    nats: tuple[NATS, JetStreamContext],
    fakes: FakeProviders,
) -> None:
    nc, js = nats
    stuck = asyncio.Event()  # the first report after the search is waiting for its ack
    intents: list[work_pb2.Charge] = []

    async def play_events_stream(msg: Msg) -> None:
        report = work_pb2.WorkerReport.FromString(msg.data)
        if not msg.reply:  # an intent, published without waiting for the stream
            intents.extend(report.charges)
            return
        body = report.WhichOneof("body")
        if body == "discovery_progress" and report.discovery_progress.progress == 0:
            ack = {"stream": bus.EVENTS_STREAM, "seq": 1}
            await msg.respond(json.dumps(ack).encode())
        else:
            stuck.set()

    async with discovery_process(env, tmp_path / "discovery-1.log") as first:
        await js.delete_stream(bus.EVENTS_STREAM)
        events = await nc.subscribe("prospect.events.>", cb=play_events_stream)
        try:
            await nc.flush()
            await bus.publish_proto(js, bus.DISCOVERY_SUBJECT, discovery_task(), "t1")
            await asyncio.wait_for(stuck.wait(), 60)
            first.kill()
        finally:
            await events.unsubscribe()
    assert fakes.google.calls("text_search") == 1
    # The search was on the books once, from the moment it left.
    assert sum(c.cost_usd for c in intents) == pytest.approx(fakes.bill_for(QUERY))

    await bus.ensure_topology(js, Settings.from_env(env))  # the events stream, back
    async with discovery_process(env, tmp_path / "discovery-2.log"):
        # JetStream redelivers the task once its ack wait has run out.
        result = await result_report(js)

    assert result.report_id.startswith(f"discovery.{JOB_ID}.1.2.")
    assert len(result.discovery_result.qualified) == 5
    assert result.discovery_result.businesses_found == 20
    assert fakes.google.calls("text_search") == 1
    assert fakes.google.calls("place_details") == 0
