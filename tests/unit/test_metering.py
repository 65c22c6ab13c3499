"""The Meter: one intent per request at list price, settled at what the provider bills,
and no negative amount anywhere a report carries."""

from __future__ import annotations

import pytest

from prospect.v1 import work_pb2
from services.common.providers import Charge
from services.common.providers.metering import Meter, WorkStopped


class Published:
    """What a meter published as intent reports (the worker publishes them on NATS)."""

    def __init__(self) -> None:
        self.charges: list[Charge] = []

    async def __call__(self, charge: Charge) -> str:
        self.charges.append(charge)
        return f"task.call{len(self.charges)}"


def assert_nothing_negative(charges: list[Charge], intents: list[work_pb2.Intent]) -> None:
    assert all(c.cost_usd >= 0 for c in charges)
    assert all(i.charge.cost_usd >= 0 and i.billed_usd >= 0 for i in intents)


async def test_an_answered_request_is_one_intent_settled_at_what_it_bills() -> None:
    published = Published()
    meter = Meter(published)
    request = await meter.open("hunter", "domain_search", 0.0245)
    assert published.charges == [Charge("hunter", "domain_search", 0.0245, metered=True)]
    meter.settle(request, 0.0)  # a search that found nothing is free

    sandbox = Charge("sandbox", "verify", 0.008)
    metered = Charge("hunter", "domain_search", 0.0, metered=True)
    charges, intents = meter.reportable([sandbox, metered])
    assert charges == [sandbox]  # the metered call travels as its intent
    assert [(i.report_id, i.charge.cost_usd, i.settled, i.billed_usd) for i in intents] == [
        ("task.call1", 0.0245, True, 0.0)
    ]
    assert intents[0].charge.provider == "hunter"
    assert_nothing_negative(charges, intents)
    assert not meter.pending
    assert meter.reportable([]) == ([], [])  # handed out once


async def test_every_attempt_is_an_intent_of_its_own() -> None:
    published = Published()
    meter = Meter(published)
    first = await meter.open("neverbounce", "verify", 0.008)
    meter.settle(first, 0.0)  # failed: not billed
    second = await meter.open("neverbounce", "verify", 0.008)
    meter.settle(second, 0.008)
    assert len(published.charges) == 2

    charges, intents = meter.reportable([])
    assert [(i.report_id, i.settled, i.billed_usd) for i in intents] == [
        ("task.call1", True, 0.0),
        ("task.call2", True, 0.008),
    ]
    assert all(i.charge.cost_usd == 0.008 for i in intents)
    assert_nothing_negative(charges, intents)


async def test_a_stopped_job_books_nothing() -> None:
    published = Published()
    stopped = False
    meter = Meter(published, stopped=lambda: stopped)
    meter.check("google_places", "text_search")  # not stopped: no error
    stopped = True
    with pytest.raises(WorkStopped):
        meter.check("google_places", "text_search")
    with pytest.raises(WorkStopped):
        await meter.open("google_places", "text_search", 0.035)
    assert published.charges == []
    assert not meter.pending
    assert meter.reportable([]) == ([], [])


async def test_an_intent_reported_unsettled_is_reported_again_once_settled() -> None:
    meter = Meter(Published())
    request = await meter.open("google_places", "place_details", 0.02)
    assert meter.pending
    _, intents = meter.reportable([])  # a report while the request is in flight
    assert [(i.settled, i.billed_usd) for i in intents] == [(False, 0.0)]
    assert not meter.pending

    meter.settle(request, 0.02)
    meter.settle(request, 0.0)  # settling again changes nothing
    _, intents = meter.reportable([])
    assert [(i.report_id, i.settled, i.billed_usd) for i in intents] == [("task.call1", True, 0.02)]
    assert meter.reportable([]) == ([], [])


async def test_a_request_in_flight_stays_at_list_price() -> None:
    """A task cancelled mid-request never settles it: its intent says list price."""
    meter = Meter(Published())
    await meter.open("hunter", "domain_search", 0.0245)
    charges, intents = meter.reportable([])
    assert charges == []
    assert [(i.charge.cost_usd, i.settled) for i in intents] == [(0.0245, False)]
