"""services.jobs.shared_reads: the watchers of one job share their re-reads."""

from __future__ import annotations

import asyncio

import pytest

from services.jobs.shared_reads import SharedReads


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Reads:
    """A read that counts itself and answers when the test lets it."""

    def __init__(self) -> None:
        self.count = 0
        self.gate = asyncio.Event()

    async def read(self) -> int:
        self.count += 1
        answer = self.count
        await self.gate.wait()
        return answer


async def test_callers_within_the_window_share_one_read() -> None:
    clock, reads = Clock(), Reads()
    shared: SharedReads[str, int] = SharedReads(1.0, clock)
    waiting = [asyncio.create_task(shared.get("job_a", reads.read)) for _ in range(100)]
    await asyncio.sleep(0)
    clock.now += 0.5
    waiting.append(asyncio.create_task(shared.get("job_a", reads.read)))
    reads.gate.set()
    assert await asyncio.gather(*waiting) == [1] * 101
    assert reads.count == 1
    assert await shared.get("job_a", reads.read) == 1  # done, still within the window


async def test_other_keys_and_later_callers_read_again() -> None:
    clock, reads = Clock(), Reads()
    reads.gate.set()
    shared: SharedReads[str, int] = SharedReads(1.0, clock)
    assert await shared.get("job_a", reads.read) == 1
    assert await shared.get("job_b", reads.read) == 2  # another job (or user): its own
    clock.now += 1.0
    assert await shared.get("job_a", reads.read) == 3  # the window has passed
    clock.now += 5.0
    await shared.get("job_c", reads.read)
    assert len(shared) == 1  # reads older than the window are dropped


async def test_a_failed_read_is_not_kept() -> None:
    shared: SharedReads[str, int] = SharedReads(1.0, Clock())
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database away")
        return 7

    with pytest.raises(ConnectionError):
        await shared.get("job_a", flaky)
    assert await shared.get("job_a", flaky) == 7  # read again at once


async def test_a_caller_going_away_does_not_cancel_the_others_read() -> None:
    reads = Reads()
    shared: SharedReads[str, int] = SharedReads(1.0, Clock())
    first = asyncio.create_task(shared.get("job_a", reads.read))
    second = asyncio.create_task(shared.get("job_a", reads.read))
    await asyncio.sleep(0)
    first.cancel()
    reads.gate.set()
    assert await second == 1
    assert first.cancelled()
