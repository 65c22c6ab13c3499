"""Sharing the report partitions among jobs replicas (rendezvous hashing), without NATS."""

from __future__ import annotations

from services.jobs.partitions import assignment, owned_by

MEMBERS = [f"replica-{i}" for i in range(4)]


def test_every_partition_has_exactly_one_owner_whoever_computes_it() -> None:
    owners = assignment(MEMBERS, 16)
    assert sorted(owners) == list(range(16)) and set(owners.values()) <= set(MEMBERS)
    shares = [owned_by(m, MEMBERS, 16) for m in MEMBERS]
    assert sum(len(s) for s in shares) == 16 and frozenset().union(*shares) == set(range(16))
    assert assignment(reversed(MEMBERS), 16) == owners  # the order of the list is irrelevant


def test_only_the_partitions_of_a_replica_that_left_move() -> None:
    before = assignment(MEMBERS, 64)
    after = assignment(MEMBERS[:-1], 64)
    moved = {p for p in range(64) if before[p] != after[p]}
    assert moved == {p for p, owner in before.items() if owner == MEMBERS[-1]}


def test_a_lone_replica_owns_everything() -> None:
    assert owned_by("replica-x", [], 8) == frozenset(range(8))
    assert assignment([], 8) == {}
