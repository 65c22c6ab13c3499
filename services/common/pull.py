"""The one pull loop over a JetStream durable consumer, shared by the workers and the jobs
service's report consumer.

:func:`pull_batches` yields the messages of each fetch; the caller decides each message's
fate (ack, nak with a delay, term). A fetch that finds nothing is idle, not an error
(nats-py 2.x raises its own ``nats.errors.TimeoutError`` or, from some code paths, the
built-in ``TimeoutError``, the first a subclass of the second, so one clause takes both;
or it returns no message at all). Any other failure (the server restarting, a reconnect
under way) is logged once per outage and retried with a growing pause; the client
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = logging.getLogger(__name__)

# How long one fetch waits for messages before it counts as idle.
FETCH_TIMEOUT_S = 1.0
# Pauses after failed fetches: doubling from the first to the last.
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 4.0


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
    while not stop.is_set():
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
