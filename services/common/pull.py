"""The one pull loop over a JetStream durable consumer, shared by the workers and the jobs
service's report consumer.

:func:`pull_batches` yields the messages of each fetch; the caller decides each message's
fate (ack, nak with a delay, term). A fetch that finds nothing is idle, not an error
(nats-py 2.x raises its own ``nats.errors.TimeoutError`` or, from some code paths, the
built-in ``TimeoutError``, the first a subclass of the second, so one clause takes both;
or it returns no message at all). Any other failure (the server restarting, a reconnect
under way) is logged once per outage and retried with a growing pause; the client
reconnects by itself.

When the loop ends (``stop``, or the caller closing it), a pull request may still be open
on the server: a fetch that timed out on the client outlives it there by the request's
transit, so a message published just then is delivered into this subscription, which
nobody reads any more. It would wait out the consumer's ``ack_wait`` there (30 s) and
reach the next reader after messages published later: a jobs replica leaving a report
partition left a discovery's reports behind this way while its result went to the new
owner. So the loop's end waits until its last request has surely expired, hands back
whatever arrived meanwhile, then unsubscribes. Handed back with a ``nak`` delayed until
that request has expired: redelivered at once, the message went straight back to the
request still open, round after round, until it had used up its deliveries
(``MAX_DELIVER``) and stayed on the stream for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = logging.getLogger(__name__)

# How long one fetch waits for messages before it counts as idle.
FETCH_TIMEOUT_S = 1.0
# Pauses after failed fetches: doubling from the first to the last.
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 4.0
# How much longer than its fetch a pull request may live on the server (its transit).
TRANSIT_S = 0.25


async def pull_batches(
    js: JetStreamContext,
    stream: str,
    consumer: str,
    stop: asyncio.Event,
    batch_size: Callable[[], int],
    *,
    fetch_timeout_s: float = FETCH_TIMEOUT_S,
) -> AsyncGenerator[list[Msg], None]:
    """Batches of up to ``batch_size()`` messages from ``consumer`` until ``stop`` is set.

    ``batch_size`` is asked before each fetch (a worker asks for its free slots); the
    caller's work on one batch finishes before the next fetch starts."""
    psub = await js.pull_subscribe_bind(consumer, stream)
    pause = 0.0
    expired_by = time.monotonic()  # when the last request is surely over on the server
    try:
        while not stop.is_set():
            expired_by = time.monotonic() + fetch_timeout_s + TRANSIT_S
            try:
                msgs = await psub.fetch(max(1, batch_size()), timeout=fetch_timeout_s)
            except TimeoutError:
                continue  # nothing arrived: idle
            except Exception as exc:
                if not pause:
                    log.warning("fetch from %s failed: %r; retrying", consumer, exc)
                pause = min(RETRY_MAX_S, pause * 2 or RETRY_FIRST_S)
                await asyncio.sleep(pause)
                continue
            if pause:
                log.info("fetching from %s again", consumer)
                pause = 0.0
            if msgs:  # an idle fetch may also come back empty
                yield msgs
    finally:
        await _hand_back(psub, consumer, expired_by)


async def _hand_back(
    psub: JetStreamContext.PullSubscription, consumer: str, expired_by: float
) -> None:
    """Nak every message delivered to ``psub`` until the monotonic time ``expired_by``
    (see the module's docstring), then unsubscribe."""
    # The subscription under the pull subscription: nats-py keeps what a request still
    # delivers after its fetch returned in that subscription's queue, for the next fetch.
    sub = psub._sub
    handed = 0
    with contextlib.suppress(Exception):  # NATS down: ack_wait hands them back instead
        while (left := expired_by - time.monotonic()) > 0 or sub.pending_msgs:
            try:
                msg = await sub.next_msg(timeout=max(left, 0.001))
            except TimeoutError:
                break
            if msg.reply and not JetStreamContext.is_status_msg(msg):  # not the server's
                # Redelivered once the request that brought it here is over.
                await msg.nak(delay=max(0.0, expired_by - time.monotonic()) + TRANSIT_S)
                handed += 1
        if handed:
            log.info("%d message(s) of %s handed back on leaving", handed, consumer)
        await psub.unsubscribe()
