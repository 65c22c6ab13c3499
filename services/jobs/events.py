"""From a worker report to the state machine's event: the one place that reads reports.

Lead rows are updated on the way (email, status, cost per provider), since a report about a
lead is the only source of those; the job itself changes only through the machine.
"""

from __future__ import annotations

from prospect.v1 import jobs_pb2, work_pb2
from services.common.money import usd_to_micros
from services.jobs import machine as m
from services.jobs.models import JobRow, LeadRow, utcnow
from services.jobs.unit import Unit


def charges_by_provider(charges: list[work_pb2.Charge]) -> dict[str, int]:
    costs: dict[str, int] = {}
    for charge in charges:
        costs[charge.provider] = costs.get(charge.provider, 0) + usd_to_micros(charge.cost_usd)
    return costs


def add_costs(lead: LeadRow, by_provider: dict[str, int]) -> None:
    merged = dict(lead.cost_by_provider or {})
    for provider, micros in by_provider.items():
        merged[provider] = merged.get(provider, 0) + micros
    lead.cost_by_provider = merged
    lead.cost_micros += sum(by_provider.values())


def event_of(
    unit: Unit,
    job: JobRow,
    report: work_pb2.WorkerReport,
    charges: list[work_pb2.Charge],
) -> m.Event:
    by_provider = charges_by_provider(charges)
    cost = sum(by_provider.values())
    providers = dict(report.providers)
    body = report.WhichOneof("body")
    if body == "discovery_progress":
        p = report.discovery_progress
        return m.DiscoveryProgressed(
            p.progress,
            p.businesses_found,
            cost,
            p.message,
            providers=providers,
            by_provider=by_provider,
        )
    if body == "discovery_result":
        r = report.discovery_result
        scores = [place.confidence_score for place in r.qualified]
        return m.DiscoveryFinished(
            r.businesses_found, scores, cost, providers=providers, by_provider=by_provider
        )
    if body == "charges_only" and not report.charges_only.lead_id:
        return m.Charged(
            cost, report.charges_only.note, False, providers=providers, by_provider=by_provider
        )
    lead_id = {
        "enrichment_result": report.enrichment_result.lead_id,
        "task_failure": report.task_failure.lead_id,
        "charges_only": report.charges_only.lead_id,
    }.get(body or "", "")
    lead = unit.lead(lead_id) if lead_id else None
    if lead is not None and lead.job_id != job.id:
        lead = None
    first = lead is not None and lead.state in ("pending", "dispatched")
    if lead is not None:
        # Every billable call counts, even on a redelivered task's second run.
        add_costs(lead, by_provider)
        lead.updated_at = utcnow()
    if body == "enrichment_result":
        enriched = report.enrichment_result
        if lead is not None and first:
            lead.email = enriched.email
            lead.email_status = enriched.email_status
            lead.from_cache = enriched.from_cache
            lead.state = "skipped" if enriched.email_status == "skipped_budget" else "enriched"
        return m.LeadEnriched(
            cost,
            bool(enriched.email),
            enriched.email_status == "valid",
            first_report=first,
            from_cache=enriched.from_cache,
            skipped_budget=enriched.email_status == "skipped_budget",
            lead_price_micros=enriched.lead_price_micros,
            providers=providers,
            by_provider=by_provider,
        )
    if body == "charges_only":
        return m.Charged(
            cost, report.charges_only.note, True, providers=providers, by_provider=by_provider
        )
    f = report.task_failure
    if lead_id and not first:
        # A failure of a lead already settled, or unknown: only its cost matters.
        return m.LeadEnriched(
            cost, False, False, first_report=False, providers=providers, by_provider=by_provider
        )
    if lead is not None and not f.permanent:
        lead.state = "failed"
        lead.email_status = "error"
    stage = (
        m.Stage(jobs_pb2.Stage.Name(f.stage).removeprefix("STAGE_"))
        if f.stage
        else (m.Stage.ENRICHING if lead_id else m.Stage.DISCOVERING)
    )
    return m.TaskFailed(
        stage,
        f.provider,
        f.error,
        f.permanent,
        cost,
        lead=bool(lead_id),
        by_provider=by_provider,
    )
