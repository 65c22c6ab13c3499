"""The one pull loop over a real nats-server: an idle consumer is quiet, not an error, and
messages flow as soon as they come (nats-py 2.16's fetch raises its own TimeoutError or the
built-in one when nothing arrives; the loops used to log the second as a failure every
few seconds)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.cli.stack import NatsServer
from services.common import bus
from services.common.pull import pull_batches
from tests.nats_helpers import connected


async def test_an_idle_consumer_logs_nothing_and_then_delivers(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with connected(nats_server.settings()) as (_, js):
        stop = asyncio.Event()
        # Fetches of a millisecond: about one in a hundred idle ones raises the built-in
        # TimeoutError (the server's "no messages" lands just before the deadline).
        batches = pull_batches(
            js, bus.WORK_STREAM, bus.DISCOVERY_CONSUMER, stop, lambda: 4, fetch_timeout_s=0.001
        )
        caplog.set_level(logging.INFO, logger="services.common.pull")

        async def publish_later() -> None:
            await asyncio.sleep(2.0)  # a thousand idle fetches or so first
            await js.publish(bus.DISCOVERY_SUBJECT, b"task", headers={"Nats-Msg-Id": "t1"})

        publisher = asyncio.create_task(publish_later())
        async with asyncio.timeout(30):
            msgs = await anext(batches)
        await publisher
        assert [m.data for m in msgs] == [b"task"]
        await msgs[0].ack_sync()
        stop.set()
        await batches.aclose()
        assert not [r for r in caplog.records if r.name == "services.common.pull"], caplog.text
