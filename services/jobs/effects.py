"""Carrying out the state machine's effects on one transaction's rows: the one place where
a transition becomes writes (leads, campaign, outbox, the job row itself).

Every effect carries its data (:mod:`services.jobs.machine`); nothing here looks at the
report or command that caused it. Messages to the workers become outbox rows in the same
transaction; stop notices go out after commit (:mod:`services.jobs.publishing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from services.common.money import split_micros
from services.jobs import machine as m
from services.jobs import webhooks
from services.jobs.convert import store_state
from services.jobs.models import JobRow, LeadRow, OutboxRow, transient
from services.jobs.tasks import new_id, queue_discovery, queue_enrichment, stop_row
from services.jobs.unit import Unit


def add_costs(lead: LeadRow, by_provider: Mapping[str, int]) -> None:
    merged = dict(lead.cost_by_provider or {})
    for provider, micros in by_provider.items():
        merged[provider] = merged.get(provider, 0) + micros
    lead.cost_by_provider = {p: v for p, v in merged.items() if v}
    lead.cost_micros += sum(by_provider.values())


def _store_leads(unit: Unit, job: JobRow, effect: m.StoreLeads, now: datetime) -> None:
    unit.add_leads(
        transient(
            LeadRow,
            {
                "id": new_id("lead"),
                "campaign_id": job.campaign_id,
                "job_id": job.id,
                "place_id": place.place_id,
                "rank": rank,
                "business_name": place.name,
                "address": place.address,
                "phone": place.phone,
                "website": place.website,
                "rating": place.rating,
                "review_count": place.review_count,
                "confidence_score": place.confidence_score,
                "email": "",
                "email_status": effect.email_status.value,
                "state": effect.state.value,
                "cost_micros": effect.shares[rank],
                "cost_by_provider": (
                    {effect.provider: effect.shares[rank]} if effect.shares[rank] else {}
                ),
                "from_cache": False,
                "email_source": "",
                "cost_by_step": {},
                "created_at": now,
                "updated_at": now,
            },
        )
        for rank, place in enumerate(effect.places)
    )


def _lead(unit: Unit, job: JobRow, lead_id: str) -> LeadRow:
    lead = unit.lead(lead_id)
    # Events name only the job's own leads (services.jobs.reports.read checks).
    assert lead is not None and lead.job_id == job.id
    return lead


def _carry_out(unit: Unit, job: JobRow, effect: m.Effect, now: datetime) -> list[OutboxRow]:
    """Apply ``effect``; returns the messages it queues."""
    match effect:
        case m.StoreLeads():
            _store_leads(unit, job, effect, now)
        case m.DispatchLeads(count=count, allowance_micros=allowance, attempt=attempt):
            pending = [lead for lead in unit.leads_of(job.id) if lead.state == m.LeadState.PENDING]
            rows = []
            for lead in pending[:count]:
                lead.state = m.LeadState.DISPATCHED.value
                lead.updated_at = now
                rows.append(queue_enrichment(unit, job, lead, allowance, attempt))
            return rows
        case m.RedispatchLeads(attempt=attempt, allowance_micros=allowance):
            return [
                queue_enrichment(unit, job, lead, allowance, attempt)
                for lead in unit.leads_of(job.id)
                if lead.state == m.LeadState.DISPATCHED
            ]
        case m.SetLeadOutcome():
            lead = _lead(unit, job, effect.lead_id)
            lead.state = effect.state.value
            lead.email_status = effect.email_status.value
            lead.email = effect.email
            lead.from_cache = effect.from_cache
            lead.email_source = effect.email_source
            lead.cost_by_step = dict(effect.cost_by_step)
            lead.updated_at = now
        case m.CloseLeads(states=states, state=state, email_status=email_status):
            for lead in unit.leads_of(job.id):
                if lead.state in states:
                    lead.state = state.value
                    lead.email_status = email_status.value
                    lead.updated_at = now
        case m.AddLeadCost(lead_id=lead_id, by_provider=by_provider):
            owed = _lead(unit, job, lead_id)
            add_costs(owed, by_provider)
            owed.updated_at = now
        case m.ShareCost(by_provider=by_provider):
            leads = unit.leads_of(job.id)
            if leads:
                for provider, micros in by_provider.items():
                    for lead, share in zip(leads, split_micros(micros, len(leads)), strict=True):
                        if share:
                            add_costs(lead, {provider: share})
        case m.FinalizeCampaign():
            unit.update_campaign(
                job.campaign_id,
                status=effect.status.value,
                results_count=effect.results_count,
                total_cost_micros=effect.total_cost_micros,
                avg_confidence=effect.avg_confidence,
                completed_at=now,
            )
        case m.RetryDiscovery(attempt=attempt):
            return [queue_discovery(unit, job, attempt)]
        case m.StopWork():
            # The durable notice; the fast one goes out after commit (publishing.py).
            return [stop_row(job.id)]
    return []


def record(unit: Unit, job: JobRow, result: m.Transition, now: datetime) -> list[OutboxRow]:
    """Carry out ``result``'s effects and store its state on ``job``, all in ``unit``;
    returns the outbox rows queued (already added to the unit)."""
    rows: list[OutboxRow] = []
    for effect in result.effects:
        rows += _carry_out(unit, job, effect, now)
    if result.state is not None:
        ending = result.state.status.terminal and not m.Status(job.status).terminal
        store_state(job, result.state, result.snapshots[-1].message, now)
        if ending and (delivery := webhooks.queue_delivery(job, now)) is not None:
            unit.add_delivery(delivery)  # committed with the final state, or not at all
    unit.add_outbox(rows)
    return rows
