"""Metered provider calls on a real nats-server and the fake Hunter: a request is on the
books (one intent report on the events stream) exactly when it leaves the process.

The rate limiter is a gate the test opens slot by slot, so "the task waits for its slot"
is a state the test sees, not a timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.cli.stack import NatsServer
from services.common import bus
from services.common.providers import EmailCandidate
from services.common.providers.http import RetryPolicy, make_client
from services.common.providers.hunter import Hunter
from services.common.providers.metering import Meter, WorkStopped
from services.common.settings import Settings
from services.common.worker import start_meter
from tests.fakes import HUNTER_CREDIT_USD, FakeProviders
from tests.nats_helpers import announce_stop, connected, reports_so_far

QUERY = "bakery in Meterville"
JOB_ID = "job_" + "0" * 32
LEAD_ID = "lead_0123"
PREFIX = f"enrichment.{LEAD_ID}.2.1"  # attempt 2, first delivery
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)


class GateLimiter:
    """A RateLimiter whose slots the test hands out one at a time."""

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(0)
        self._arrived = asyncio.Condition()
        self.waiting = 0  # acquisitions begun

    async def acquire(self) -> None:
        async with self._arrived:
            self.waiting += 1
            self._arrived.notify_all()
        await self._slots.acquire()

    async def penalize(self, seconds: float) -> None:
        pass

    def grant(self, slots: int = 1) -> None:
        for _ in range(slots):
            self._slots.release()

    async def until_waiting(self, n: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.waiting >= n)


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=5, every_domain_has_emails=True) as running:
        yield running


@pytest.fixture
async def nats(nats_server: NatsServer) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    # One partition of the events stream: every report in one consumer, in stream order.
    async with connected(nats_server.settings(report_partitions=1)) as running:
        yield running


@pytest.fixture
async def client(fakes: FakeProviders) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(Settings.from_env(fakes.env())) as http:
        yield http


class Task:
    """One enrichment task's email search, metered as a worker meters it, through a Hunter
    whose rate limiter is ``limiter``."""

    def __init__(
        self,
        nats: tuple[NATS, JetStreamContext],
        cancels: bus.CancelRegistry,
        hunter: Hunter,
        limiter: GateLimiter,
    ) -> None:
        self.meter: Meter | None = None
        self.limiter = limiter
        (self._nc, self._js), self._cancels, self._hunter = nats, cancels, hunter

    async def find_email(self, domain: str) -> EmailCandidate:
        self.meter = start_meter(self._nc, self._cancels, JOB_ID, PREFIX, 2, LEAD_ID)
        return await self._hunter.find_email(domain, "")

    async def stop_job(self) -> None:
        """Cancel the job as the jobs service does; the task's cancel registry knows it."""
        await announce_stop(self._nc, self._js, JOB_ID)
        assert await self._cancels.refresh(JOB_ID)


@pytest.fixture
async def task(
    nats: tuple[NATS, JetStreamContext], fakes: FakeProviders, client: httpx.AsyncClient
) -> Task:
    cancels = await bus.CancelRegistry.open(*nats)
    limiter = GateLimiter()
    hunter = Hunter(client, Settings.from_env(fakes.env()), limiter, retry_policy=FAST)
    return Task(nats, cancels, hunter, limiter)


async def test_a_call_stopped_at_its_slot_leaves_nothing(
    nats: tuple[NATS, JetStreamContext], fakes: FakeProviders, task: Task
) -> None:
    _, js = nats
    call = asyncio.create_task(task.find_email(fakes.world.domains_for(QUERY)[0]))

    await task.limiter.until_waiting(1)  # waiting for its slot when the job is cancelled
    await task.stop_job()
    task.limiter.grant()
    with pytest.raises(WorkStopped):
        await call

    assert fakes.hunter.requests == []
    assert await reports_so_far(js, JOB_ID) == []  # no intent
    assert task.meter is not None and task.meter.reportable([]) == ([], [])


async def test_every_attempt_sent_is_one_intent(
    nats: tuple[NATS, JetStreamContext], fakes: FakeProviders, task: Task
) -> None:
    _, js = nats
    task.limiter.grant(3)
    fakes.hunter.fail_next(2, "server_error")

    found = await task.find_email(fakes.world.domains_for(QUERY)[0])
    assert found.email
    assert len(fakes.hunter.requests) == 3

    published = await reports_so_far(js, JOB_ID)
    assert [r.report_id for r in published] == [f"{PREFIX}.call{n}" for n in (1, 2, 3)]
    for report in published:
        assert report.job_id == JOB_ID and report.attempt == 2
        assert report.WhichOneof("body") == "charges_only"
        assert report.charges_only.lead_id == LEAD_ID
        assert [(c.provider, c.operation, c.cost_usd) for c in report.charges] == [
            ("hunter", "domain_search", HUNTER_CREDIT_USD)
        ]
    # The task's next report settles them: two failed attempts are free, the answer is
    # billed one credit, which is what Hunter billed.
    assert task.meter is not None
    charges, intents = task.meter.reportable(found.charges)
    assert charges == []
    assert [(i.report_id, i.settled, i.billed_usd) for i in intents] == [
        (f"{PREFIX}.call1", True, 0.0),
        (f"{PREFIX}.call2", True, 0.0),
        (f"{PREFIX}.call3", True, HUNTER_CREDIT_USD),
    ]
    assert sum(i.billed_usd for i in intents) == pytest.approx(fakes.hunter.bill_for(QUERY))


async def test_a_retry_stopped_at_its_slot_leaves_only_the_attempt_sent(
    nats: tuple[NATS, JetStreamContext], fakes: FakeProviders, task: Task
) -> None:
    _, js = nats
    fakes.hunter.fail_next(1, "server_error")
    call = asyncio.create_task(task.find_email(fakes.world.domains_for(QUERY)[0]))

    task.limiter.grant()
    await task.limiter.until_waiting(2)  # the first attempt failed; the retry waits
    await task.stop_job()
    task.limiter.grant()
    with pytest.raises(WorkStopped):
        await call

    assert len(fakes.hunter.requests) == 1
    assert [r.report_id for r in await reports_so_far(js, JOB_ID)] == [f"{PREFIX}.call1"]
    assert task.meter is not None
    _, intents = task.meter.reportable([])
    assert [(i.report_id, i.settled, i.billed_usd) for i in intents] == [
        (f"{PREFIX}.call1", True, 0.0)
    ]
