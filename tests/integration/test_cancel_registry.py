"""A worker's cancel registry on a real nats-server: the notice is heard at once, the
bucket is asked before a task unless it answered "not cancelled" within CLEAR_FOR_S on
the same connection, and a stop whose notice was lost is seen once that answer expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from services.cli.stack import NatsServer
from services.common import bus
from tests.clock import Clock
from tests.nats_helpers import announce_stop, connected

JOB_ID = "job_" + "1" * 32


@pytest.fixture
async def nats(nats_server: NatsServer) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    async with connected(nats_server.settings()) as running:
        yield running


async def registry(
    nats: tuple[NATS, JetStreamContext], clock: Clock
) -> tuple[bus.CancelRegistry, KeyValue]:
    nc, js = nats
    kv = await js.key_value(bus.CANCEL_BUCKET)
    return bus.CancelRegistry(nc, kv, clock), kv


async def stop_without_notice(kv: KeyValue, job_id: str) -> None:
    """The bucket's entry only: the jobs service stopped before its notice went out, and
    the outbox wrote the entry later."""
    await kv.put(job_id, b"1")


async def test_a_stop_whose_notice_was_lost_is_seen_once_the_clear_answer_expires(
    nats: tuple[NATS, JetStreamContext],
) -> None:
    clock = Clock()
    cancels, kv = await registry(nats, clock)
    assert not await cancels.refresh(JOB_ID)
    await stop_without_notice(kv, JOB_ID)
    clock.now += bus.CLEAR_FOR_S / 2
    assert not await cancels.refresh(JOB_ID)  # the bucket's answer of a moment ago stands
    clock.now += bus.CLEAR_FOR_S / 2
    assert await cancels.refresh(JOB_ID)  # asked again: stopped
    assert cancels.is_cancelled(JOB_ID)


async def test_a_reconnect_drops_the_clear_answers(nats: tuple[NATS, JetStreamContext]) -> None:
    nc, _ = nats
    clock = Clock()
    cancels, kv = await registry(nats, clock)
    assert not await cancels.refresh(JOB_ID)
    await stop_without_notice(kv, JOB_ID)
    nc.stats["reconnects"] += 1  # notices may have been missed while it was away
    assert await cancels.refresh(JOB_ID)


async def test_the_notice_is_heard_whatever_the_bucket_said(
    nats: tuple[NATS, JetStreamContext],
) -> None:
    nc, js = nats
    cancels = await bus.CancelRegistry.open(nc, js)
    assert not await cancels.refresh(JOB_ID)
    await announce_stop(nc, js, JOB_ID)
    for _ in range(1000):  # until the notice's callback ran (at most 10 s)
        if cancels.is_cancelled(JOB_ID):
            break
        await asyncio.sleep(0.01)
    assert await cancels.refresh(JOB_ID)  # within the bucket's clear answer: the notice


async def test_many_jobs_keep_a_bounded_set_of_answers(
    nats: tuple[NATS, JetStreamContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus, "CLEAR_KEPT", 10)
    clock = Clock()
    cancels, _ = await registry(nats, clock)
    for n in range(25):
        assert not await cancels.refresh(f"job_{n:032x}")
        clock.now += bus.CLEAR_FOR_S / 4  # older answers expire as newer come
    assert len(cancels._clear) <= 10
