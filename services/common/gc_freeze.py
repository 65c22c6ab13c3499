"""The garbage collector, settled once a service has started.

A service starts by importing grpc, SQLAlchemy, protobuf and nats and building its objects:
hundreds of thousands of objects that live as long as the process. Every full collection
walked them all again, pausing the event loop for 80-100 ms on the development machine,
which set the slowest submits and live updates. Frozen, they are out of the collector's
view for good (``gc.freeze``); what the service allocates later is collected as usual.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once start-up is done, right before serving."""
    gc.collect()
    gc.freeze()
