"""The one pull loop over a real nats-server: an idle consumer is quiet, not an error, and
messages flow as soon as they come (nats-py 2.16's fetch raises its own TimeoutError or the
built-in one when nothing arrives; the loops used to log the second as a failure every
few seconds)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from nats.aio.msg import Msg

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


async def test_what_a_request_still_open_delivers_as_the_loop_ends_is_handed_back(
    nats_server: NatsServer,
) -> None:
    """A pull request can outlive its fetch on the server (a fetch that timed out on the
    client, by the request's transit): what it delivers after the loop has ended lands in
    a subscription nobody reads, and would wait out the consumer's ack_wait there (30 s),
    then reach the next reader behind messages published later. The loop's end hands it
    back at once."""
    async with connected(nats_server.settings()) as (nc, js):
        api = f"$JS.API.CONSUMER.MSG.NEXT.{bus.WORK_STREAM}.{bus.DISCOVERY_CONSUMER}"
        inboxes: list[str] = []  # where the loop's pull requests ask for messages

        async def seen(msg: Msg) -> None:
            inboxes.append(msg.reply)

        await nc.subscribe(api, cb=seen)
        stop = asyncio.Event()
        batches = pull_batches(
            js, bus.WORK_STREAM, bus.DISCOVERY_CONSUMER, stop, lambda: 4, fetch_timeout_s=0.2
        )
        await js.publish(bus.DISCOVERY_SUBJECT, b"first", headers={"Nats-Msg-Id": "t1"})
        async with asyncio.timeout(30):
            [first] = await anext(batches)  # the loop waits at its yield: no fetch under way
        await first.ack_sync()
        await asyncio.sleep(0.5)  # the loop's own requests have all expired
        # A request of the loop's still open on the server, as a slow one would be.
        await nc.publish(api, json.dumps({"batch": 1, "expires": 10**10}).encode(), inboxes[-1])
        await nc.flush()
        await js.publish(bus.DISCOVERY_SUBJECT, b"late", headers={"Nats-Msg-Id": "t2"})
        await asyncio.sleep(0.2)  # delivered into the loop's subscription
        stop.set()
        await batches.aclose()

        psub = await js.pull_subscribe_bind(bus.DISCOVERY_CONSUMER, bus.WORK_STREAM)
        [late] = await psub.fetch(1, timeout=5)  # at once, not after ack_wait
        assert late.data == b"late" and late.metadata.num_delivered == 2
        await late.ack_sync()
