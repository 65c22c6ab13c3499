"""Reading a worker report: pure functions, no database, no NATS.

:func:`check` refuses a report that breaks the rules of its shape (ids, bounded text,
money that is finite and not negative, statuses a worker may give) before it comes near a
transaction, so one bad report is refused on its own and holds up nobody else.
:func:`bookings` says what money a report puts on the books, given the report ids applied
before it; :func:`read` turns it into the state machine's event.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container

from prospect.v1 import work_pb2
from services.common.email_steps import SOURCES, STEPS
from services.common.money import usd_to_micros
from services.jobs import machine as m
from services.jobs.validation import JOB_ID, LEAD_ID

TASK_ID = re.compile(r"task_[0-9a-f]{32}")
REPORT_ID_MAX = 200
# No single provider call costs anywhere near this: more is a broken or forged report.
MAX_CHARGE_USD = 1_000.0
MAX_PLACES = 100
MAX_FOUND = 100_000
NAME_MAX = 64  # provider, operation and capability names
MESSAGE_MAX = 1_000
# Column sizes of the leads table (services.jobs.models.LeadRow).
_PLACE_TEXT = {"place_id": 300, "name": 300, "address": 500, "phone": 64, "website": 500}
EMAIL_MAX = 320


class BadReport(ValueError):
    """A report that can never be applied; the message says which rule it broke, and
    ``reason`` which kind of rule (one of services.jobs.metrics.REFUSALS)."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


def _money(value: float, what: str) -> None:
    if not math.isfinite(value) or value < 0 or value > MAX_CHARGE_USD:
        raise BadReport(f"{what} is {value!r}: money must be finite, 0 to {MAX_CHARGE_USD:g}")


_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def _name(value: str, what: str) -> None:
    if len(value) > NAME_MAX or not _NAME.fullmatch(value):
        raise BadReport(f"{what} must be 1-{NAME_MAX} lowercase letters, digits, _ . -")


def _text(value: str, what: str, limit: int = MESSAGE_MAX) -> None:
    if len(value) > limit:
        raise BadReport(f"{what} is longer than {limit} characters")


def _charge(charge: work_pb2.Charge, what: str) -> None:
    _name(charge.provider, f"{what}.provider")
    _name(charge.operation, f"{what}.operation")
    _money(charge.cost_usd, f"{what}.cost_usd")


def _place(place: work_pb2.Place, what: str) -> None:
    if not place.place_id:
        raise BadReport(f"{what}.place_id is empty")
    for field, limit in _PLACE_TEXT.items():
        _text(getattr(place, field), f"{what}.{field}", limit)
    if not 0 <= place.confidence_score <= 100:
        raise BadReport(f"{what}.confidence_score must be 0-100")
    if not math.isfinite(place.rating) or not 0 <= place.rating <= 5:
        raise BadReport(f"{what}.rating must be 0-5")
    if place.review_count < 0:
        raise BadReport(f"{what}.review_count must not be negative")


def lead_id_of(report: work_pb2.WorkerReport) -> str:
    """The lead a report is about ("" for the job as a whole)."""
    body = report.WhichOneof("body")
    if body in ("enrichment_result", "task_failure", "task_stopped", "charges_only"):
        return str(getattr(report, body).lead_id)
    return ""


def check(report: work_pb2.WorkerReport) -> None:
    """Raise :class:`BadReport` unless ``report`` keeps every rule of its shape."""
    if not report.report_id or len(report.report_id) > REPORT_ID_MAX:
        raise BadReport(f"report_id must be 1-{REPORT_ID_MAX} characters")
    if not JOB_ID.fullmatch(report.job_id):
        raise BadReport(f"job_id {report.job_id[:60]!r} is not a job id")
    if not TASK_ID.fullmatch(report.task_id):
        raise BadReport(f"task_id {report.task_id[:60]!r} is not a task id")
    body = report.WhichOneof("body")
    if body is None:
        raise BadReport("the report has no body")
    lead_id = lead_id_of(report)
    if lead_id and not LEAD_ID.fullmatch(lead_id):
        raise BadReport(f"lead_id {lead_id[:60]!r} is not a lead id")
    if body == "enrichment_result" and not lead_id:
        raise BadReport("enrichment_result.lead_id is empty")
    for i, charge in enumerate(report.charges):
        _charge(charge, f"charges[{i}]")
    seen: set[str] = set()
    for i, intent in enumerate(report.intents):
        what = f"intents[{i}]"
        if not intent.report_id or len(intent.report_id) > REPORT_ID_MAX:
            raise BadReport(f"{what}.report_id must be 1-{REPORT_ID_MAX} characters")
        if intent.report_id in seen or intent.report_id == report.report_id:
            raise BadReport(f"{what}.report_id {intent.report_id!r} is repeated")
        seen.add(intent.report_id)
        _charge(intent.charge, f"{what}.charge")
        _money(intent.billed_usd, f"{what}.billed_usd")
    if len(report.providers) > 8:
        raise BadReport("providers names more than 8 capabilities")
    for capability, provider in report.providers.items():
        _name(capability, "providers key")
        _name(provider, f"providers[{capability!r}]")
    match body:
        case "discovery_progress":
            p = report.discovery_progress
            if not 0 <= p.progress <= 100 or not 0 <= p.businesses_found <= MAX_FOUND:
                raise BadReport("discovery_progress is out of range")
            _text(p.message, "discovery_progress.message")
        case "discovery_result":
            r = report.discovery_result
            if not 0 <= r.businesses_found <= MAX_FOUND or len(r.qualified) > MAX_PLACES:
                raise BadReport(f"discovery_result holds more than {MAX_PLACES} places")
            place_ids = {place.place_id for place in r.qualified}
            if len(place_ids) != len(r.qualified):
                raise BadReport("discovery_result repeats a place")
            for i, place in enumerate(r.qualified):
                _place(place, f"discovery_result.qualified[{i}]")
        case "enrichment_result":
            e = report.enrichment_result
            if e.email_status not in m.WORKER_EMAIL_STATUSES:
                raise BadReport(f"enrichment_result.email_status {e.email_status[:40]!r} unknown")
            _text(e.email, "enrichment_result.email", EMAIL_MAX)
            if e.lead_price_micros < 0 or e.lead_price_micros > usd_to_micros(MAX_CHARGE_USD):
                raise BadReport("enrichment_result.lead_price_micros is out of range")
            if e.email_source not in SOURCES:
                raise BadReport(f"enrichment_result.email_source {e.email_source[:40]!r} unknown")
            for step, micros in e.cost_by_step_micros.items():
                if step not in STEPS:
                    raise BadReport(f"enrichment_result.cost_by_step_micros: {step[:40]!r} unknown")
                if not 0 <= micros <= usd_to_micros(MAX_CHARGE_USD):
                    raise BadReport("enrichment_result.cost_by_step_micros is out of range")
        case "task_failure":
            f = report.task_failure
            _text(f.error, "task_failure.error")
            if f.provider:
                _name(f.provider, "task_failure.provider")
        case "task_stopped":
            _text(report.task_stopped.note, "task_stopped.note")
        case "charges_only":
            _text(report.charges_only.note, "charges_only.note")


def bookings(report: work_pb2.WorkerReport, applied: Container[str]) -> tuple[m.Cost, list[str]]:
    """The money ``report`` puts on the books, per provider, and the ids of the intents it
    applies (those not in ``applied``).

    Its own charges count as they are. An intent not applied yet counts at what the
    provider billed when it carries the answer (``settled``), else at its list price; an
    intent applied before (from its own report, at the list price) counts only the
    correction to what was billed."""
    costs: dict[str, int] = {}

    def add(provider: str, micros: int) -> None:
        costs[provider] = costs.get(provider, 0) + micros

    for charge in report.charges:
        add(charge.provider, usd_to_micros(charge.cost_usd))
    new: list[str] = []
    for intent in report.intents:
        listed = usd_to_micros(intent.charge.cost_usd)
        billed = usd_to_micros(intent.billed_usd) if intent.settled else listed
        if intent.report_id in applied:
            add(intent.charge.provider, billed - listed)
        else:
            new.append(intent.report_id)
            add(intent.charge.provider, billed)
    return m.Cost({p: v for p, v in costs.items() if v}), new


# A link, or what a mail client or browser would turn into one.
_LINK = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]*://|www\.)\S+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")


def shown(text: str) -> str:
    """A worker's words as a user may read them: one line, no links (a compromised
    worker's phishing URL never reaches a victim; operators find the full text in the
    worker's log), no control or direction-changing characters."""
    return _CONTROL.sub(" ", _LINK.sub("[link removed]", text)).strip()


def read(report: work_pb2.WorkerReport, cost: m.Cost, lead: m.LeadRef | None) -> m.ReportEvent:
    """The event ``report`` (checked) means, with ``cost`` from :func:`bookings` and the
    lead it is about as stored (None: no such lead of this job, a :class:`BadReport`)."""
    providers = dict(report.providers)
    body = report.WhichOneof("body")
    lead_id = lead_id_of(report)
    if lead_id and lead is None:
        raise BadReport(f"lead {lead_id} is not a lead of job {report.job_id}")
    match body:
        case "discovery_progress":
            p = report.discovery_progress
            message = shown(p.message)
            return m.DiscoveryProgressed(p.progress, p.businesses_found, message, cost, providers)
        case "discovery_result":
            r = report.discovery_result
            return m.DiscoveryFinished(
                r.businesses_found, tuple(r.qualified), cost, providers, r.skipped_known
            )
        case "enrichment_result":
            e = report.enrichment_result
            assert lead is not None
            return m.LeadEnriched(
                lead,
                e.email,
                m.EmailStatus(e.email_status),
                e.from_cache,
                e.lead_price_micros,
                cost,
                providers,
                e.email_source,
                dict(e.cost_by_step_micros),
            )
        case "task_failure":
            f = report.task_failure
            error = shown(f.error)
            if lead is not None:
                return m.LeadFailed(lead, f.provider, error, f.permanent, cost, providers)
            return m.DiscoveryFailed(f.provider, error, f.permanent, cost, providers)
        case "task_stopped":
            if lead is not None:
                return m.LeadStopped(lead, cost, providers)
            return m.DiscoveryStopped(cost, providers)
        case "charges_only":
            note = shown(report.charges_only.note)
            if lead is not None:
                return m.LeadCharged(lead, note, cost, providers)
            return m.Charged(note, cost, providers)
    raise BadReport(f"unknown report body {body!r}")


def money_of(report: work_pb2.WorkerReport, cost: m.Cost, lead: m.LeadRef | None) -> m.ReportEvent:
    """The event of ``report`` when only its money counts (its task had ended before):
    its calls' cost on the books, nothing else."""
    providers = dict(report.providers)
    note = "calls of a delivery that ran after its task had ended"
    if lead is not None:
        return m.LeadCharged(lead, note, cost, providers)
    return m.Charged(note, cost, providers)
