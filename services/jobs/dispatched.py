"""Is a report about work the jobs service dispatched, and within that work's bounds?

A worker is trusted for what its task let it say, never more. Every task queued is
recorded under an unguessable id (services/jobs/tasks.py), and :func:`check` (pure: no
database, no NATS) refuses a report unless it names such a task, of the report's job,
attempt and lead, with a body that kind of task gives; and unless what it claims stays
within what that task could have done: each call at no more
than the price table's price for its operation, no more money in all than the task could
spend (its budget, or every delivery making every call), no more places than the search
returns, no more leads than the campaign keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prospect.v1 import work_pb2
from services.common.money import usd_to_micros
from services.common.plan import (
    EMAIL_SEARCHES,
    SEARCH_CALLS_MAX,
    SEARCH_MAX,
    VERIFICATIONS_MAX,
)
from services.common.settings import Settings
from services.jobs.models import TaskRow
from services.jobs.reports import BadReport, lead_id_of
from services.jobs.tasks import DISCOVERY, ENRICHMENT

# The bodies each kind of task may report, and those that end it.
_BODIES = {
    DISCOVERY: {"discovery_progress", "discovery_result", "task_failure", "task_stopped",
                "charges_only"},
    ENRICHMENT: {"enrichment_result", "task_failure", "task_stopped", "charges_only"},
}  # fmt: skip
ENDING = frozenset({"discovery_result", "enrichment_result", "task_failure", "task_stopped"})


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The most one call of each operation costs, with any provider (a real one at its
    list price or the sandbox at its simulated one), in micro-dollars; and how many
    deliveries a task may have."""

    prices: Mapping[str, int]
    max_deliver: int

    @classmethod
    def from_settings(cls, s: Settings) -> PriceTable:
        search = max(s.price_hunter_domain_search, s.sandbox_cost_email_search)
        prices = {
            "text_search": max(s.price_google_text_search, s.sandbox_cost_text_search),
            "place_details": max(s.price_google_place_details, s.sandbox_cost_place_details),
            **{operation: search for operation in EMAIL_SEARCHES},
            "verify": max(s.price_neverbounce_check, s.sandbox_cost_verify),
        }
        return cls({op: usd_to_micros(usd) for op, usd in prices.items()}, s.max_deliver)

    def makes(self, kind: str, operation: str) -> bool:
        """Whether a ``kind`` task makes ``operation`` calls."""
        if kind == DISCOVERY:
            return operation in ("text_search", "place_details")
        return operation in (*EMAIL_SEARCHES, "verify")

    def per_delivery(self, kind: str) -> int:
        """The most one delivery of a ``kind`` task spends, every call at its price."""
        p = self.prices
        if kind == DISCOVERY:
            return SEARCH_CALLS_MAX * p["text_search"] + SEARCH_MAX * p["place_details"]
        # The email waterfall: one search and at most VERIFICATIONS_MAX verifications.
        return p[EMAIL_SEARCHES[0]] + VERIFICATIONS_MAX * p["verify"]

    def limit(self, task: TaskRow) -> int:
        """The most ``task``'s reports may book in all: its budget when it has one, else
        every delivery making every call at the highest price."""
        most = self.max_deliver * self.per_delivery(task.kind)
        return min(most, task.allowance_micros) if task.allowance_micros else most


def _calls(report: work_pb2.WorkerReport) -> Iterable[tuple[str, str, float]]:
    """(where, operation, most USD it claims) for each charge and intent of ``report``."""
    for i, charge in enumerate(report.charges):
        yield f"charges[{i}]", charge.operation, charge.cost_usd
    for i, intent in enumerate(report.intents):
        claimed = max(intent.charge.cost_usd, intent.billed_usd)
        yield f"intents[{i}]", intent.charge.operation, claimed


def check(
    report: work_pb2.WorkerReport,
    task: TaskRow | None,
    booked_micros: int,
    config: Mapping[str, Any],
    table: PriceTable,
) -> None:
    """Raise :class:`BadReport` unless ``report`` (its shape checked) is about ``task``, a
    task the jobs service queued, and stays within its bounds.
    ``booked_micros``: what the report would put on the books; ``config``: the job's
    campaign config."""
    if task is None:
        raise BadReport(f"task {report.task_id[:60]!r} is not a task the jobs service queued")
    if task.job_id != report.job_id:
        raise BadReport(f"task {task.id} is not a task of job {report.job_id}")
    if task.attempt != report.attempt or task.lead_id != lead_id_of(report):
        raise BadReport(f"task {task.id} is not about attempt {report.attempt} of that lead")
    body = report.WhichOneof("body") or ""
    if body not in _BODIES[task.kind]:
        raise BadReport(f"a {task.kind} task does not report {body}")
    for where, operation, usd in _calls(report):
        price = table.prices.get(operation)
        if price is None or not table.makes(task.kind, operation):
            raise BadReport(f"{where}: {task.kind} tasks make no {operation[:40]!r} call")
        if usd_to_micros(usd) > price:
            raise BadReport(f"{where}: {usd!r} USD is more than a {operation} call costs")
    limit = table.limit(task)
    if task.spent_micros + booked_micros > limit:
        raise BadReport(
            f"task {task.id} would book {task.spent_micros + booked_micros} micro-USD, "
            f"more than the {limit} it may spend"
        )
    match body:
        case "discovery_progress":
            if report.discovery_progress.businesses_found > SEARCH_MAX:
                raise BadReport(f"more than the {SEARCH_MAX} places a search returns")
        case "discovery_result":
            _check_result(report.discovery_result, config)
        case "enrichment_result":
            if report.enrichment_result.lead_price_micros > table.per_delivery(ENRICHMENT):
                raise BadReport("enrichment_result.lead_price_micros is above the price table")
            if sum(report.enrichment_result.cost_by_step_micros.values()) > limit:
                raise BadReport("enrichment_result.cost_by_step_micros adds up beyond the task")


def _check_result(result: work_pb2.DiscoveryResult, config: Mapping[str, Any]) -> None:
    keeps = int(config.get("max_results") or 0)
    least = int(config.get("min_confidence_score") or 0)
    if result.businesses_found > SEARCH_MAX:
        raise BadReport(f"more than the {SEARCH_MAX} places a search returns")
    if not 0 <= result.skipped_known <= result.businesses_found:
        raise BadReport("skipped_known is not between 0 and the places found")
    if len(result.qualified) > min(keeps, result.businesses_found):
        raise BadReport(
            f"{len(result.qualified)} qualified places: more than the campaign keeps ({keeps}) "
            f"or than were found ({result.businesses_found})"
        )
    if any(place.confidence_score < least for place in result.qualified):
        raise BadReport(f"a qualified place scores under the campaign's minimum ({least})")


def ended_before(task: TaskRow) -> bool:
    """Whether ``task`` had reported its end before: another report about it (a later
    delivery of the same task, the first having died before its ack) counts only for the
    money its calls cost, within the task's bounds, and changes nothing else."""
    return task.closed


def record(task: TaskRow, report: work_pb2.WorkerReport, booked_micros: int) -> None:
    """What an applied report changes on its task: the money it booked, and whether it
    ended the task."""
    task.spent_micros += booked_micros
    if report.WhichOneof("body") in ENDING:
        task.closed = True
