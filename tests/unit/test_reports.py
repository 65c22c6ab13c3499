"""Reading worker reports, without NATS or a database: the checks that refuse a bad report
on its own, the money each report books, and the event it becomes."""

from __future__ import annotations

import math

import pytest

from prospect.v1 import work_pb2
from services.jobs import machine as m
from services.jobs import reports
from services.jobs.reports import BadReport

JOB = "job_" + "a" * 32
LEAD = "lead_" + "b" * 32


def charge(usd: float, provider: str = "hunter") -> work_pb2.Charge:
    return work_pb2.Charge(provider=provider, operation="domain_search", cost_usd=usd)


TASK = "task_" + "0" * 32


def report(**body: object) -> work_pb2.WorkerReport:
    return work_pb2.WorkerReport(
        report_id="r1",
        job_id=JOB,
        task_id=TASK,
        **body,  # type: ignore[arg-type]
    )


def result(status: str = "valid") -> work_pb2.WorkerReport:
    return report(
        enrichment_result=work_pb2.EnrichmentResult(
            lead_id=LEAD, email="a@b.example", email_status=status
        )
    )


def intent(report_id: str, listed: float, billed: float | None = None) -> work_pb2.Intent:
    settled = billed is not None
    return work_pb2.Intent(
        report_id=report_id, charge=charge(listed), settled=settled, billed_usd=billed or 0.0
    )


@pytest.mark.parametrize("usd", [math.nan, math.inf, -math.inf, -0.01, 1e9])
def test_money_that_is_not_finite_or_is_negative_is_refused(usd: float) -> None:
    bad = result()
    bad.charges.append(charge(usd))
    with pytest.raises(BadReport, match=r"charges\[0\]\.cost_usd"):
        reports.check(bad)
    bad = result()
    bad.intents.append(intent("r1.call1", 0.0245, billed=usd))
    with pytest.raises(BadReport, match=r"billed_usd"):
        reports.check(bad)


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda r: setattr(r, "job_id", "job_1; DROP TABLE"), "not a job id"),
        (lambda r: setattr(r, "report_id", ""), "report_id"),
        (lambda r: r.enrichment_result.__setattr__("lead_id", "lead_x"), "not a lead id"),
        (lambda r: r.enrichment_result.__setattr__("email_status", "owned"), "email_status"),
        (lambda r: r.enrichment_result.__setattr__("email", "x" * 400), "email"),
        (lambda r: r.intents.extend([intent("i", 1), intent("i", 1)]), "repeated"),
    ],
)
def test_a_report_breaking_a_rule_is_refused_naming_it(mutate: object, rule: str) -> None:
    bad = result()
    mutate(bad)  # type: ignore[operator]
    with pytest.raises(BadReport, match=rule):
        reports.check(bad)


def test_a_report_without_a_body_or_with_an_oversized_place_is_refused() -> None:
    with pytest.raises(BadReport, match="no body"):
        reports.check(report())
    place = work_pb2.Place(place_id="p", name="n" * 301, confidence_score=50)
    bad = report(discovery_result=work_pb2.DiscoveryResult(qualified=[place]))
    with pytest.raises(BadReport, match=r"qualified\[0\]\.name"):
        reports.check(bad)
    twice = work_pb2.Place(place_id="p", confidence_score=50)
    bad = report(discovery_result=work_pb2.DiscoveryResult(qualified=[twice, twice]))
    with pytest.raises(BadReport, match="repeats a place"):
        reports.check(bad)


def test_a_good_report_passes() -> None:
    good = result()
    good.charges.append(charge(0.008, "neverbounce"))
    good.intents.append(intent("r1.call1", 0.0245, billed=0.0))
    reports.check(good)


def test_bookings_count_an_intent_once_and_correct_it_to_the_bill() -> None:
    final = result()
    final.charges.append(charge(0.008, "sandbox"))
    final.intents.extend([intent("call1", 0.0245, billed=0.0), intent("call2", 0.0245)])
    # Neither intent applied yet: the settled one at what was billed, the other at list.
    cost, new = reports.bookings(final, applied=set())
    assert cost.by_provider == {"sandbox": 8_000, "hunter": 24_500}
    assert new == ["call1", "call2"]
    # Both applied before from their own reports (at list price): only the correction.
    cost, new = reports.bookings(final, applied={"call1", "call2"})
    assert cost.by_provider == {"sandbox": 8_000, "hunter": -24_500}
    assert new == []


def test_read_turns_each_body_into_its_event() -> None:
    ref = m.LeadRef(LEAD, m.LeadState.DISPATCHED)
    cost = m.Cost({"hunter": 24_500})
    event = reports.read(result("unverified"), cost, ref)
    assert event == m.LeadEnriched(ref, "a@b.example", m.EmailStatus.UNVERIFIED, cost=cost)
    stopped = report(task_stopped=work_pb2.TaskStopped(lead_id=LEAD))
    assert reports.read(stopped, cost, ref) == m.LeadStopped(ref, cost)
    assert reports.read(report(task_stopped=work_pb2.TaskStopped()), cost, None) == (
        m.DiscoveryStopped(cost)
    )
    failed = report(task_failure=work_pb2.TaskFailure(provider="google_places", error="401"))
    assert reports.read(failed, cost, None) == m.DiscoveryFailed(
        "google_places", "401", False, cost
    )


def test_a_report_about_a_lead_of_another_job_is_refused() -> None:
    with pytest.raises(BadReport, match="not a lead of job"):
        reports.read(result(), m.NO_COST, None)
