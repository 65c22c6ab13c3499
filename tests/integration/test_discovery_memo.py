"""A job's discovery is paid for once, on a real nats-server against the fake Google: two
attempts started together make one search between them (single flight), a stall retry
after the first attempt's result was lost starts from the memo, a later try pays only for
what the memo lacks, and a lease left by a dead holder is taken over once it expires.

Each worker has a NATS connection and providers of its own, as a separate process would
(and so no shared in-process place cache: only the memo can spare a second worker a call).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from prospect.v1 import jobs_pb2, work_pb2
from services.cli.stack import NatsServer
from services.common import bus
from services.common.nats_auth import SUPERUSER
from services.common.providers import open_providers
from services.common.settings import Settings
from services.discovery.worker import DiscoveryWorker
from tests.fakes import FakeProviders
from tests.nats_helpers import connected, reports_so_far

QUERY = "bakery in Memoville"
JOB_ID = "job_" + "2" * 32


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=25) as running:
        yield running


@pytest.fixture
def settings(nats_server: NatsServer, fakes: FakeProviders) -> Settings:
    # One partition of the events stream: every report in one consumer, in stream order.
    env = {
        **fakes.env(),
        **nats_server.client_env(SUPERUSER),
        "REPORT_PARTITIONS": "1",
        "ACK_WAIT_S": "3",
    }
    return Settings.from_env(env)


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    async with connected(settings) as (_, js):
        yield js


@asynccontextmanager
async def discovery_worker(settings: Settings) -> AsyncIterator[DiscoveryWorker]:
    """A discovery worker on a NATS connection of its own, closed on the way out."""
    nc: NATS = await bus.connect(settings, "test-discovery")
    try:
        js = nc.jetstream()
        providers = await open_providers(settings, js)
        try:
            cancels = await bus.CancelRegistry.open(nc, js)
            worker = DiscoveryWorker(settings, nc, js, cancels, providers)
            await worker.start()
            yield worker
        finally:
            await providers.aclose()
    finally:
        await nc.close()


@asynccontextmanager
async def discovery_workers(settings: Settings, n: int) -> AsyncIterator[list[DiscoveryWorker]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(discovery_worker(settings)) for _ in range(n)]


def discovery_task(attempt: int) -> work_pb2.DiscoveryTask:
    config = jobs_pb2.CampaignConfig(
        business_type="bakery", location="Memoville", max_results=5, min_confidence_score=0
    )
    return work_pb2.DiscoveryTask(job_id=JOB_ID, campaign_id="c", config=config, attempt=attempt)


async def queue(js: JetStreamContext, *tasks: work_pb2.DiscoveryTask) -> None:
    for task in tasks:
        await bus.publish_proto(js, bus.DISCOVERY_SUBJECT, task, f"t{task.attempt}")


async def take(js: JetStreamContext, n: int = 1) -> list[Msg]:
    """The next ``n`` discovery tasks JetStream delivers (a nak'd one once its delay is over)."""
    psub = await js.pull_subscribe_bind(bus.DISCOVERY_CONSUMER, bus.WORK_STREAM)
    try:
        msgs: list[Msg] = []
        while len(msgs) < n:
            msgs += await psub.fetch(n - len(msgs), timeout=15)
        return msgs
    finally:
        await psub.unsubscribe()


async def handle_attempt(js: JetStreamContext, worker: DiscoveryWorker, attempt: int) -> None:
    """Queue the job's discovery task of ``attempt`` and have ``worker`` handle it."""
    await queue(js, discovery_task(attempt))
    [msg] = await take(js)
    await worker.handle(msg)


def results(published: list[work_pb2.WorkerReport]) -> list[work_pb2.WorkerReport]:
    return [r for r in published if r.WhichOneof("body") == "discovery_result"]


def billed_usd(published: list[work_pb2.WorkerReport]) -> float:
    """What the reports put on the books for Google: each request's intent, as billed."""
    intents = {i.report_id: i for r in published for i in r.intents}
    return sum(i.billed_usd for i in intents.values())


async def until(predicate: Callable[[], bool], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def discovery_kv(js: JetStreamContext) -> KeyValue:
    return await js.key_value(bus.DISCOVERY_BUCKET)


async def put_lease(js: JetStreamContext, holder: str, expires_at: float) -> None:
    lease = work_pb2.DiscoveryLease(holder=holder, expires_at=expires_at)
    await (await discovery_kv(js)).put(f"lease.{JOB_ID}", lease.SerializeToString())


async def test_two_attempts_started_together_pay_for_the_search_once(
    settings: Settings, js: JetStreamContext, fakes: FakeProviders
) -> None:
    # Two tries after the first (its task lost, say): each takes the job's lease first.
    await queue(js, discovery_task(2), discovery_task(3))
    fakes.google.hold()  # the search that goes out stays in flight until the other has looked
    async with discovery_workers(settings, 2) as (one, two):
        first, second = await take(js, 2)
        running = {asyncio.create_task(one.handle(first)), asyncio.create_task(two.handle(second))}
        try:
            # One takes the job's lease and searches; the other finds it held, hands its
            # task back with a delay and is done.
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            await until(lambda: len(fakes.google.requests) == 1, "the search")
            fakes.google.release()
            await asyncio.gather(*done, *running)
        finally:
            fakes.google.release()
            for task in running:
                task.cancel()
        [again] = await take(js)
        assert again.metadata.num_delivered == 2
        waiter = one if again.data == first.data else two
        await waiter.handle(again)

    published = await reports_so_far(js, JOB_ID)
    assert sorted(r.attempt for r in results(published)) == [2, 3]
    a, b = (r.discovery_result for r in results(published))
    assert a == b and len(a.qualified) == 5 and a.businesses_found == 20
    assert fakes.google.calls("text_search") == 1 and fakes.google.calls("place_details") == 0
    assert billed_usd(published) == pytest.approx(fakes.bill_for(QUERY))
    # Every report of the attempt that waited carries no money: it paid for nothing.
    waited = work_pb2.DiscoveryTask.FromString(again.data).attempt
    assert all(not r.intents and not r.charges for r in published if r.attempt == waited)


async def test_a_stall_retry_after_a_lost_result_starts_from_the_memo(
    settings: Settings, js: JetStreamContext, fakes: FakeProviders
) -> None:
    async with discovery_workers(settings, 2) as (first_worker, second_worker):
        await handle_attempt(js, first_worker, 1)
        lost = await reports_so_far(js, JOB_ID)  # attempt 1's result never reaches the jobs service

        # The watchdog's attempt 2, taken by another worker.
        await handle_attempt(js, second_worker, 2)

    published = await reports_so_far(js, JOB_ID)
    [result] = results(published)
    assert result.attempt == 2 and result.report_id.startswith(f"discovery.{JOB_ID}.2.1.")
    assert result.discovery_result == results(lost)[0].discovery_result
    assert all(not r.intents and not r.charges for r in published), "attempt 2 paid"
    assert fakes.google.calls("text_search") == 1 and fakes.google.calls("place_details") == 0
    assert billed_usd(lost) == pytest.approx(fakes.bill_for(QUERY))


async def test_a_later_try_pays_only_for_what_the_memo_lacks(
    settings: Settings, js: JetStreamContext, fakes: FakeProviders
) -> None:
    async with discovery_workers(settings, 2) as (first_worker, second_worker):
        await handle_attempt(js, first_worker, 1)
        before = results(await reports_so_far(js, JOB_ID))[0].discovery_result
        # The memo as a try killed half-way through the details would have left it.
        kv = await discovery_kv(js)
        memo = work_pb2.DiscoveryMemo.FromString((await kv.get(f"memo.{JOB_ID}")).value or b"")
        assert memo.searched and len(memo.found) == len(memo.details) == 20
        kept = memo.details[3:]
        del memo.details[:]
        memo.details.extend(kept)
        await kv.put(f"memo.{JOB_ID}", memo.SerializeToString())

        await handle_attempt(js, second_worker, 2)

    published = await reports_so_far(js, JOB_ID)
    [result] = results(published)
    assert result.discovery_result == before
    assert fakes.google.calls("text_search") == 1 and fakes.google.calls("place_details") == 3
    details = [b for b in fakes.google.billed if b.operation == "place_details"]
    assert billed_usd(published) == pytest.approx(sum(b.price_usd for b in details))
    memo = work_pb2.DiscoveryMemo.FromString((await kv.get(f"memo.{JOB_ID}")).value or b"")
    assert len(memo.details) == 20


async def test_a_live_lease_sends_the_task_back_and_an_expired_one_is_taken_over(
    settings: Settings, js: JetStreamContext, fakes: FakeProviders
) -> None:
    await put_lease(js, "discovery.other.1.1~dead", time.time() + 60)
    async with discovery_worker(settings) as worker:
        await handle_attempt(js, worker, 2)
        assert fakes.google.requests == [] and not await reports_so_far(js, JOB_ID)

        await put_lease(js, "discovery.other.1.1~dead", time.time() - 1)  # its holder died
        [again] = await take(js)
        await worker.handle(again)

    [result] = results(await reports_so_far(js, JOB_ID))
    assert result.report_id.startswith(f"discovery.{JOB_ID}.2.2.")
    assert fakes.google.calls("text_search") == 1
    lease = work_pb2.DiscoveryLease.FromString(
        (await (await discovery_kv(js)).get(f"lease.{JOB_ID}")).value or b""
    )
    assert lease.holder == "" and lease.expires_at == 0  # released when done


async def test_the_last_delivery_waits_for_the_lease_in_place(
    settings: Settings,
    js: JetStreamContext,
    fakes: FakeProviders,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A nak on the last delivery JetStream makes would leave the task to nobody.
    last = dataclasses.replace(settings, max_deliver=1)
    await put_lease(js, "discovery.other.1.1~alive", time.time() + 60)
    caplog.set_level(logging.INFO, logger="services.discovery.worker")
    async with discovery_worker(last) as worker:
        await queue(js, discovery_task(2))
        [msg] = await take(js)
        handling = asyncio.create_task(worker.handle(msg))
        try:
            await until(lambda: "last delivery, waiting" in caplog.text, "the task to wait")
            assert not handling.done() and fakes.google.requests == []
            await put_lease(js, "", 0.0)  # its holder let go
            await asyncio.wait_for(handling, 30)
        finally:
            handling.cancel()

    [result] = results(await reports_so_far(js, JOB_ID))
    assert result.report_id.startswith(f"discovery.{JOB_ID}.2.1.")
    assert fakes.google.calls("text_search") == 1


async def test_a_delivery_s_money_travels_in_its_last_report(
    settings: Settings, js: JetStreamContext, fakes: FakeProviders
) -> None:
    """Its result carries every call's settled intent and its progress reports none: the
    job may end as soon as the result is applied, before a progress report held up on the
    bus (stranded while a partition moved between jobs replicas) arrives, when a final job
    refuses its money. A chaos run lost a search from the books this way."""
    fakes.google.latency_s = 0.15  # so the "Found ..." progress report follows the search
    async with discovery_worker(settings) as worker:
        await handle_attempt(js, worker, 1)

    published = await reports_so_far(js, JOB_ID)
    progress = [r for r in published if r.WhichOneof("body") == "discovery_progress"]
    found = [r for r in progress if r.discovery_progress.progress == 10]
    assert found, "no progress report after the search"
    assert all(not r.charges and not r.intents for r in progress)
    [result] = results(published)
    own = [r.report_id for r in published if r.WhichOneof("body") == "charges_only"]
    assert own and sorted(i.report_id for i in result.intents) == sorted(own)
    assert all(i.settled for i in result.intents)
    assert sum(i.billed_usd for i in result.intents) == pytest.approx(fakes.bill_for(QUERY))
