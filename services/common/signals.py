"""SIGTERM and SIGINT for the services: the first asks for a graceful stop; any later one,
up to the process's exit, is ignored (Kubernetes and launchers may repeat it), so a
process that shut down cleanly always exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT while inside the block; ignore them after it."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            # Unregister from the loop first: closing the loop would reset them to default.
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
