"""The garbage collector, settled once a service has started.

A service starts by importing grpc, SQLAlchemy, protobuf and nats and building its objects:
hundreds of thousands of objects that live as long as the process. Every full collection
walked them all again, pausing the event loop for 80-100 ms on the development machine,
which set the slowest submits and live updates. Frozen, they are out of the collector's
view for good (``gc.freeze``); what the service allocates later is collected as usual.

What it allocates later can be long-lived too: each open WatchJob stream holds its gRPC
call, handler and generator. With 10,000 streams on a jobs replica, the default young
generation (700 allocations) pushed the short-lived objects of every update (protobuf
wrappers, futures) into the old generation fast enough that a full collection came every
second or two, each walking every stream's objects: 12 of them, 3.4 s of pauses, up to
0.6-0.7 s each, in one run of the bench's watchers scenario. With :data:`YOUNG` they die
young instead: 2-3 full collections, 0.18-0.25 s in all, in the same scenario, and the
throughput scenario's rate and CPU a campaign unchanged within its noise. A young
collection then walks more objects: 2.2 ms on average against 0.5 ms in that run (on a
2-core machine kept busy), about as much collecting in all, and far fewer pauses.
"""

from __future__ import annotations

import gc

YOUNG = 10_000  # allocations (less deallocations) between young collections; default 700


def settle() -> None:
    """Call once start-up is done, right before serving."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
