"""Spend ledgers (services/common/allowance.py) on a real nats-server's KV bucket.

Two Allowance objects on one key stand for two deliveries of one task (or two worker
processes): what one reserved, the other sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.cli.stack import NatsServer
from services.common import bus
from services.common.allowance import Allowance
from services.common.errors import PermanentProviderError, TransientProviderError
from services.common.providers import Charge
from services.common.settings import Settings
from tests.nats_helpers import connected


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    async with connected(nats_server.settings()) as (_, js):
        yield js


@pytest.fixture
async def kv(js: JetStreamContext) -> KeyValue:
    return await js.key_value(bus.ALLOWANCE_BUCKET)


async def ledger(kv: KeyValue, key: str) -> int:
    return int((await kv.get(key)).value or b"0")


async def test_the_bucket_is_part_of_the_topology(js: JetStreamContext, kv: KeyValue) -> None:
    status = await kv.status()
    assert (status.bucket, status.history) == (bus.ALLOWANCE_BUCKET, 1)
    assert status.stream_info.config.storage == StorageType.FILE
    assert status.ttl == pytest.approx(bus.ALLOWANCE_TTL_S)
    # Idempotent: a second process starting changes nothing.
    await bus.ensure_topology(js, Settings())


async def test_reserve_up_to_the_cap_then_refuse(kv: KeyValue) -> None:
    allowance = Allowance(kv, "lead.a", cap_micros=100)
    assert await allowance.reserve(60)
    assert await allowance.reserve(40)  # exactly the cap
    assert not await allowance.reserve(1)
    assert await ledger(kv, "lead.a") == 100
    await allowance.release(30)
    assert await ledger(kv, "lead.a") == 70
    assert not await allowance.reserve(31)
    assert await allowance.reserve(30)
    assert await ledger(kv, "lead.a") == 100


async def test_release_never_goes_below_zero(kv: KeyValue) -> None:
    allowance = Allowance(kv, "lead.b", cap_micros=100)
    await allowance.release(10)  # nothing reserved: nothing written below 0
    assert await allowance.reserve(20)
    await allowance.release(50)
    assert await ledger(kv, "lead.b") == 0
    assert await allowance.reserve(100)


async def test_a_redelivery_sees_what_its_predecessor_reserved(kv: KeyValue) -> None:
    first = Allowance(kv, "lead.c", cap_micros=32_500)
    assert await first.reserve(24_500)  # the worker dies here: its reservation stands
    second = Allowance(kv, "lead.c", cap_micros=32_500)
    assert not await second.reserve(24_500)
    assert await second.reserve(8_000)
    assert await ledger(kv, "lead.c") == 32_500
    other = Allowance(kv, "lead.d", cap_micros=32_500)  # keys are independent
    assert await other.reserve(24_500)


async def test_concurrent_reservers_never_pass_the_cap(
    nats_server: NatsServer, kv: KeyValue
) -> None:
    # Two processes (connections), each with many reservations racing on one key.
    other_nc = await bus.connect(nats_server.settings(), "other")
    try:
        other_kv = await other_nc.jetstream().key_value(bus.ALLOWANCE_BUCKET)
        allowances = [Allowance(kv, "job.race", 1_000), Allowance(other_kv, "job.race", 1_000)]
        granted = await asyncio.gather(
            *(allowances[n % 2].reserve(70) for n in range(40))
        )  # fmt: skip
    finally:
        await other_nc.close()
    assert sum(granted) == 1_000 // 70  # 14 fit, every other one is refused
    assert await ledger(kv, "job.race") == 14 * 70


async def test_cap_zero_is_unlimited_and_touches_nothing(kv: KeyValue) -> None:
    allowance = Allowance(kv, "lead.free", cap_micros=0)
    assert await allowance.reserve(10**12)
    await allowance.release(5)
    with pytest.raises(KeyNotFoundError):
        await kv.get("lead.free")


async def test_spend_releases_what_the_call_did_not_bill(kv: KeyValue) -> None:
    allowance = Allowance(kv, "lead.e", cap_micros=50_000)
    called: list[str] = []

    async def search() -> list[Charge]:
        called.append("search")
        return []  # found nothing: free

    async def verify() -> list[Charge]:
        called.append("verify")
        return [Charge("neverbounce", "verify", 0.008)]

    assert await allowance.spend(24_500, search, lambda charges: charges) == []
    assert await ledger(kv, "lead.e") == 0
    assert await allowance.spend(8_000, verify, lambda charges: charges) is not None
    assert await ledger(kv, "lead.e") == 8_000
    assert await allowance.spend(42_001, verify, lambda charges: charges) is None  # refused
    assert called == ["search", "verify"]


async def test_spend_keeps_the_reservation_unless_the_call_failed(kv: KeyValue) -> None:
    allowance = Allowance(kv, "lead.f", cap_micros=50_000)

    async def failing() -> list[Charge]:
        raise TransientProviderError("hunter", "server error (503)")

    with pytest.raises(TransientProviderError):
        await allowance.spend(24_500, failing, lambda charges: charges)
    assert await ledger(kv, "lead.f") == 0  # a failed call bills nothing

    async def cancelled_mid_request() -> list[Charge]:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await allowance.spend(24_500, cancelled_mid_request, lambda charges: charges)
    assert await ledger(kv, "lead.f") == 24_500  # the request may have left: kept

    async def refused() -> list[Charge]:
        raise PermanentProviderError("hunter", "account credits exhausted (429)")

    with pytest.raises(PermanentProviderError):
        await allowance.spend(24_500, refused, lambda charges: charges)
    assert await ledger(kv, "lead.f") == 24_500
