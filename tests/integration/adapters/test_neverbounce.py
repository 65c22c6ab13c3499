"""The NeverBounce adapter against the fake: every check verified and charged (a duplicate
too), the key in the POST body and never in a URL, and catchall kept as catchall."""

from __future__ import annotations

import httpx
import pytest

from services.common.providers.neverbounce import NeverBounce
from services.common.settings import Settings
from tests.fakes import FakeProviders
from tests.integration.adapters.helpers import (
    FAST,
    QUERY,
    RecordingLimiter,
    assert_keys_not_in_urls,
    known_emails,
)


async def test_neverbounce_verifies_and_charges_every_check(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    verifier = NeverBounce(client, settings, RecordingLimiter(), retry_policy=FAST)
    emails = known_emails(fakes)[:6]
    results = [await verifier.verify(email) for email in [*emails, emails[0]]]  # a duplicate

    assert [r.status for r in results] == [
        fakes.world.neverbounce_result(e) for e in [*emails, emails[0]]
    ]
    assert all(
        [(c.provider, c.operation, c.cost_usd) for c in r.charges]
        == [("neverbounce", "verify", 0.008)]
        for r in results
    )
    charged = sum(c.cost_usd for r in results for c in r.charges)
    assert charged == pytest.approx(fakes.bill_for(QUERY)) == pytest.approx(7 * 0.008)
    request = fakes.neverbounce.requests[0]
    assert request.method == "POST" and request.query == {}
    assert f"key={fakes.neverbounce.api_key}".encode() in request.body
    assert_keys_not_in_urls(fakes)


async def test_neverbounce_catchall_is_kept_as_catchall(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    address = next(
        f"someone{i}@catchall-{i}.example"
        for i in range(1000)
        if fakes.world.neverbounce_result(f"someone{i}@catchall-{i}.example") == "catchall"
    )
    verifier = NeverBounce(client, settings, RecordingLimiter(), retry_policy=FAST)
    verification = await verifier.verify(address)
    assert verification.status == "catchall"  # never "accept_all"
    assert sum(c.cost_usd for c in verification.charges) == pytest.approx(
        fakes.neverbounce.total_billed()
    )
