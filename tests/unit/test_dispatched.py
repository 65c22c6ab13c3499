"""A report is applied only for work the jobs service dispatched, within that work's
bounds (services/jobs/dispatched.py): each rule refuses on its own."""

from __future__ import annotations

import pytest

from prospect.v1 import work_pb2
from services.common.money import usd_to_micros
from services.common.settings import Settings
from services.jobs import dispatched
from services.jobs.dispatched import PriceTable
from services.jobs.models import TaskRow, transient, utcnow
from services.jobs.reports import BadReport

JOB, OTHER_JOB = "job_" + "a" * 32, "job_" + "b" * 32
LEAD = "lead_" + "c" * 32
TABLE = PriceTable.from_settings(Settings())
CONFIG = {"max_results": 2, "min_confidence_score": 50}


def task(kind: str = "discovery", **values: object) -> TaskRow:
    row = {
        "id": "task_" + "d" * 32, "job_id": JOB, "lead_id": LEAD if kind == "enrichment" else "",
        "kind": kind, "attempt": 1, "allowance_micros": 0, "spent_micros": 0, "closed": False,
        "created_at": utcnow(),
    }  # fmt: skip
    return transient(TaskRow, {**row, **values})


def result(n: int = 2, found: int = 2, score: int = 80) -> work_pb2.WorkerReport:
    places = [work_pb2.Place(place_id=f"p{i}", confidence_score=score) for i in range(n)]
    return work_pb2.WorkerReport(
        report_id="r", job_id=JOB, attempt=1, task_id="task_" + "d" * 32,
        discovery_result=work_pb2.DiscoveryResult(businesses_found=found, qualified=places),
    )  # fmt: skip


def enriched(**values: object) -> work_pb2.WorkerReport:
    body = work_pb2.EnrichmentResult(lead_id=LEAD, email_status="valid", **values)  # type: ignore[arg-type]
    return work_pb2.WorkerReport(
        report_id="r", job_id=JOB, attempt=1, task_id="task_" + "d" * 32, enrichment_result=body
    )


def check(report: work_pb2.WorkerReport, row: TaskRow | None, booked: int = 0) -> None:
    dispatched.check(report, row, booked, CONFIG, TABLE)


def test_a_report_within_its_tasks_bounds_passes() -> None:
    check(result(), task(), booked=usd_to_micros(0.035))
    report = enriched(lead_price_micros=TABLE.per_delivery("enrichment"))
    for operation in ("email_search", "domain_search", "verify"):  # sandbox's and Hunter's
        report.charges.append(work_pb2.Charge(provider="x", operation=operation, cost_usd=0.008))
    check(report, task("enrichment"))


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (None, "is not a task the jobs service queued"),
        (task(job_id=OTHER_JOB), "is not a task of job"),
        (task(attempt=2), "is not about attempt 1"),
        (task("enrichment"), "is not about attempt 1 of that lead"),  # the lead differs
    ],
)
def test_a_report_about_work_not_dispatched_is_refused(row: TaskRow | None, match: str) -> None:
    with pytest.raises(BadReport, match=match):
        check(result(), row)


def test_a_body_of_the_other_kind_of_task_is_refused() -> None:
    report = enriched()
    with pytest.raises(BadReport, match="does not report enrichment_result"):
        check(report, task("discovery", lead_id=LEAD))


@pytest.mark.parametrize(
    ("operation", "usd", "match"),
    [
        ("verify", 0.001, "make no 'verify' call"),
        ("teleport", 0.001, "make no 'teleport' call"),
        ("text_search", 0.5, "more than a text_search call costs"),
    ],
)
def test_a_call_the_task_does_not_make_or_over_its_price_is_refused(
    operation: str, usd: float, match: str
) -> None:
    report = result()
    report.charges.append(work_pb2.Charge(provider="x", operation=operation, cost_usd=usd))
    with pytest.raises(BadReport, match=match):
        check(report, task())
    settled = result()
    charge = work_pb2.Charge(provider="x", operation="text_search", cost_usd=0.01)
    settled.intents.append(work_pb2.Intent(report_id="i", charge=charge, billed_usd=usd))
    if operation == "text_search":  # billed above the price: refused the same
        with pytest.raises(BadReport, match=match):
            check(settled, task())


def test_a_task_books_no_more_than_its_budget_or_every_delivery_could_spend() -> None:
    with pytest.raises(BadReport, match="more than the 5000 it may spend"):
        check(result(), task(allowance_micros=5000, spent_micros=4000), booked=1001)
    check(result(), task(allowance_micros=5000, spent_micros=4000), booked=1000)
    most = TABLE.max_deliver * TABLE.per_delivery("enrichment")
    with pytest.raises(BadReport, match="more than the"):
        check(enriched(), task("enrichment", spent_micros=most), booked=1)


@pytest.mark.parametrize(
    ("report", "match"),
    [
        (result(found=61), "places a search returns"),
        (result(n=3, found=3), "more than the campaign keeps"),
        (result(n=2, found=1), "or than were found"),
        (result(score=49), "under the campaign's minimum"),
        (enriched(lead_price_micros=10**9), "above the price table"),
    ],
)
def test_results_beyond_what_the_task_could_find_are_refused(
    report: work_pb2.WorkerReport, match: str
) -> None:
    kind = "enrichment" if report.HasField("enrichment_result") else "discovery"
    with pytest.raises(BadReport, match=match):
        check(report, task(kind))


def test_a_task_that_reported_its_end_takes_only_money_after() -> None:
    row = task()
    assert not dispatched.ended_before(row)
    dispatched.record(row, result(), 35_000)
    assert dispatched.ended_before(row) and row.spent_micros == 35_000
    progress = result()
    progress.discovery_progress.CopyFrom(work_pb2.DiscoveryProgress(progress=10))
    other = task()
    dispatched.record(other, progress, 1)
    assert not dispatched.ended_before(other)
