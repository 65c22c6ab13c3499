"""Compare-and-set on one NATS KV entry: the read-modify-write loop that the shared rate
limits, the allowance ledger and the discovery lease all rest on.

Read the entry and its revision; compute the new value; write it with ``last=revision``
(``create`` for an entry that does not exist); when another process wrote first, read
again, after a little jitter that spreads the retries of processes that collided.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


@dataclass(frozen=True, slots=True)
class Swapped:
    """What :func:`swap` found and left."""

    old: bytes | None  # the value read (None: no such entry)
    new: bytes | None  # the value written, or None when ``change`` wrote nothing
    revision: int | None  # the entry's revision afterwards (None: no such entry)


async def swap(kv: KeyValue, key: str, change: Callable[[bytes | None], bytes | None]) -> Swapped:
    """Set ``key`` to ``change(value read)``, as one step against every other writer.

    ``change`` may be called several times (once per read) and must not have effects; it
    returns None to write nothing, and may raise to give up. Raises ``nats.errors.Error``
    when NATS cannot say."""
    while True:
        try:
            entry = await kv.get(key)
            revision: int | None = entry.revision
            old: bytes | None = entry.value or b""
        except KeyNotFoundError:  # never written, or expired
            revision, old = None, None
        new = change(old)
        if new is None or new == old:
            return Swapped(old, None, revision)
        try:
            if revision is None:
                written = await kv.create(key, new)
            else:
                written = await kv.update(key, new, last=revision)
            return Swapped(old, new, int(written))
        except KeyWrongLastSequenceError:
            await asyncio.sleep(random.uniform(0, 0.002))
