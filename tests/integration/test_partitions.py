"""Jobs replicas share the report partitions through a real nats-server: each partition
has one owner, and the partitions of a replica that leaves move to the others."""

from __future__ import annotations

import asyncio

from services.cli.stack import NatsServer
from services.common import bus
from services.jobs.partitions import Membership

PARTITIONS = 8


async def follow(membership: Membership, stop: asyncio.Event, seen: list[frozenset[int]]) -> None:
    async for owned in membership.assignments(stop):
        seen.append(owned)


async def settled(views: list[list[frozenset[int]]], want: int) -> None:
    """Until the latest views of ``want`` replicas split the partitions exactly."""
    for _ in range(200):
        latest = [v[-1] for v in views if v]
        if len(latest) == want and sum(map(len, latest)) == PARTITIONS:
            if frozenset().union(*latest) == set(range(PARTITIONS)):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"partitions never settled: {[v[-1:] for v in views]}")


async def test_replicas_split_the_partitions_and_take_over_when_one_leaves(
    nats_server: NatsServer,
) -> None:
    nc = await bus.connect(nats_server.settings(), "test")
    js = nc.jetstream()
    a, b = Membership(js, PARTITIONS), Membership(js, PARTITIONS)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    seen_a: list[frozenset[int]] = []
    seen_b: list[frozenset[int]] = []
    tasks = [
        asyncio.create_task(follow(a, stop_a, seen_a)),
        asyncio.create_task(follow(b, stop_b, seen_b)),
    ]
    try:
        await settled([seen_a, seen_b], 2)
        assert seen_a[-1].isdisjoint(seen_b[-1])
        stop_b.set()  # b leaves (its entry deleted): a takes everything
        await tasks[1]
        await settled([seen_a], 1)
        assert seen_a[-1] == frozenset(range(PARTITIONS))
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()
