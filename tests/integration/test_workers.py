"""The worker side on a real nats-server and the fake providers: the task runner's pull loop
and shutdown, what a dropped task reports, and an enrichment budget that holds when the
same lead comes again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from prospect.v1 import work_pb2
from services.cli.stack import NatsServer
from services.common import bus
from services.common.money import usd_to_micros
from services.common.nats_auth import SUPERUSER
from services.common.providers import open_providers
from services.common.settings import Settings
from services.common.worker import TaskRunner
from services.enrichment.worker import EnrichmentWorker
from tests.fakes import HUNTER_CREDIT_USD, NEVERBOUNCE_CHECK_USD, FakeProviders
from tests.nats_helpers import announce_stop, connected, reports_so_far

QUERY = "bakery in Workerton"
JOB_ID = "job_" + "1" * 32


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=5, every_domain_has_emails=True) as running:
        yield running


@pytest.fixture
def settings(nats_server: NatsServer, fakes: FakeProviders) -> Settings:
    # No cache: a lead coming again must pay again, so only its allowance can stop it. One
    # partition of the events stream: every report in one consumer, in stream order.
    env = {
        **fakes.env(),
        **nats_server.client_env(SUPERUSER),
        "ENRICHMENT_CACHE_DAYS": "0",
        "REPORT_PARTITIONS": "1",
    }
    return Settings.from_env(env)


@pytest.fixture
async def nats(settings: Settings) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    async with connected(settings) as running:
        yield running


async def queue(js: JetStreamContext, task: work_pb2.EnrichmentTask, msg_id: str) -> Msg:
    """Publish ``task`` on the work stream and take it off the enrichment consumer."""
    await bus.publish_proto(js, bus.ENRICHMENT_SUBJECT, task, msg_id)
    psub = await js.pull_subscribe_bind(bus.ENRICHMENT_CONSUMER, bus.WORK_STREAM)
    [msg] = await psub.fetch(1, timeout=5)
    return msg


async def enrichment_worker(
    settings: Settings, nc: NATS, js: JetStreamContext
) -> tuple[EnrichmentWorker, bus.CancelRegistry]:
    cancels = await bus.CancelRegistry.open(nc, js)
    worker = EnrichmentWorker(settings, nc, js, cancels, await open_providers(settings, js))
    await worker.start()
    return worker, cancels


def lead_task(
    fakes: FakeProviders, lead_id: str, attempt: int, budget: float
) -> work_pb2.EnrichmentTask:
    place = work_pb2.Place(
        place_id="p1", name="Crumb & Co", website=f"https://{fakes.world.domains_for(QUERY)[0]}"
    )
    return work_pb2.EnrichmentTask(
        job_id=JOB_ID, campaign_id="c", lead_id=lead_id, place=place, verify_emails=True,
        attempt=attempt, budget_micros=usd_to_micros(budget),
    )  # fmt: skip


async def test_runner_runs_at_most_its_concurrency_and_hands_back_at_shutdown(
    nats: tuple[NATS, JetStreamContext],
) -> None:
    _, js = nats
    tasks = [b"task %d" % n for n in range(5)]
    for data in tasks:
        await js.publish(bus.ENRICHMENT_SUBJECT, data)
    running, most, done = 0, 0, []
    permits = asyncio.Semaphore(0)  # a handler finishes when the test hands it a permit
    changed = asyncio.Condition()

    async def count(step: int) -> None:
        nonlocal running, most
        async with changed:
            running += step
            most = max(most, running)
            changed.notify_all()

    async def handler(msg: Msg) -> None:
        await count(+1)
        try:
            await permits.acquire()
            await msg.ack()
            done.append(msg.data)
        finally:
            await count(-1)

    async def until(finished: int, in_flight: int) -> None:
        async with changed:
            await changed.wait_for(lambda: len(done) == finished and running == in_flight)

    runner = TaskRunner(js, bus.WORK_STREAM, bus.ENRICHMENT_CONSUMER, handler, 2, 10.0)
    stop = asyncio.Event()
    run = asyncio.create_task(runner.run(stop, grace=0.2))
    for finished in range(4):  # one task ends at a time; the next takes its slot
        await until(finished, 2)
        permits.release()
    await until(4, 1)
    stop.set()  # the fifth is still running: out of grace, it is handed back
    await asyncio.wait_for(run, 30)

    assert most == 2
    psub = await js.pull_subscribe_bind(bus.ENRICHMENT_CONSUMER, bus.WORK_STREAM)
    [again] = await psub.fetch(1, timeout=5)
    assert sorted([*done, again.data]) == tasks
    assert again.metadata.num_delivered == 2


async def test_a_dropped_task_of_a_stopped_job_says_so(
    settings: Settings, nats: tuple[NATS, JetStreamContext], fakes: FakeProviders
) -> None:
    nc, js = nats
    worker, _ = await enrichment_worker(settings, nc, js)
    await announce_stop(nc, js, JOB_ID)
    msg = await queue(js, lead_task(fakes, "lead_a", attempt=3, budget=0), "t1")

    await worker.handle(msg)

    [report] = await reports_so_far(js, JOB_ID)
    assert report.report_id == "enrichment.lead_a.3.1.stopped"
    assert (report.job_id, report.attempt) == (JOB_ID, 3)
    assert report.WhichOneof("body") == "task_stopped"
    assert report.task_stopped.lead_id == "lead_a"
    assert not report.charges and not report.intents
    assert fakes.hunter.requests == [] and fakes.neverbounce.requests == []


async def test_an_undecodable_task_is_dropped_for_good_and_the_next_one_runs(
    settings: Settings, nats: tuple[NATS, JetStreamContext], fakes: FakeProviders
) -> None:
    nc, js = nats
    worker, _ = await enrichment_worker(settings, nc, js)
    await js.publish(bus.ENRICHMENT_SUBJECT, b"\xff not a task", headers={"Nats-Msg-Id": "bad"})
    psub = await js.pull_subscribe_bind(bus.ENRICHMENT_CONSUMER, bus.WORK_STREAM)
    [bad] = await psub.fetch(1, timeout=5)

    await worker.handle(bad)  # terminated: never delivered again, no report of any job

    budget = HUNTER_CREDIT_USD + NEVERBOUNCE_CHECK_USD
    await worker.handle(await queue(js, lead_task(fakes, "lead_c", 1, budget), "t2"))
    reports = await reports_so_far(js, JOB_ID)
    assert reports and all(r.report_id.startswith("enrichment.lead_c.") for r in reports)
    assert any(r.WhichOneof("body") == "enrichment_result" for r in reports)  # the good task ran
    info = await js.consumer_info(bus.WORK_STREAM, bus.ENRICHMENT_CONSUMER)
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_lead_coming_again_spends_only_what_its_allowance_has_left(
    settings: Settings, nats: tuple[NATS, JetStreamContext], fakes: FakeProviders
) -> None:
    nc, js = nats
    worker, _ = await enrichment_worker(settings, nc, js)
    budget = HUNTER_CREDIT_USD + NEVERBOUNCE_CHECK_USD  # one search and one check

    await worker.handle(await queue(js, lead_task(fakes, "lead_b", 1, budget), "t1"))
    await worker.handle(await queue(js, lead_task(fakes, "lead_b", 2, budget), "t2"))

    published = await reports_so_far(js, JOB_ID)
    first, second = [r for r in published if r.WhichOneof("body") == "enrichment_result"]
    # The first time, each paid request was an intent report of its own.
    assert [r.report_id for r in published if r.WhichOneof("body") == "charges_only"] == [
        "enrichment.lead_b.1.1.call1",
        "enrichment.lead_b.1.1.call2",
    ]
    assert first.attempt == 1 and first.enrichment_result.verified
    billed = sum(i.billed_usd for i in first.intents)
    assert billed == pytest.approx(budget) == pytest.approx(fakes.bill_for(QUERY))
    # The second time, the allowance is spent: no paid call, the lead is skipped.
    assert second.attempt == 2
    assert second.enrichment_result.email_status == "skipped_budget"
    assert not second.charges and not second.intents
    assert len(fakes.hunter.requests) == len(fakes.neverbounce.requests) == 1
