"""How a job ends: COMPLETED when every lead is settled, or, stopped, CANCELLED or FAILED
once the work under way has reported (see "Stopping" in docs/design.md)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from services.jobs.machine._builder import ENRICH_END, Builder, dispatchable
from services.jobs.machine._effects import CloseLeads, DispatchLeads, FinalizeCampaign, StopWork
from services.jobs.machine._state import (
    DISCOVERY_STAGES,
    SKIPPED_BY_STOP,
    STOPPED_AS,
    EmailStatus,
    JobState,
    LeadState,
    Metrics,
    Stage,
    Status,
    dollars,
)

# A job's error when a provider failed it: "<STAGE> failed: <provider>: <cause>".
_PROVIDER_FAILURE = re.compile(r"[A-Z]+ failed: ([A-Za-z0-9_.-]+): ")


def provider_failure(stage: Stage, provider: str, cause: str) -> str:
    """The error of a job that ``provider`` failed in ``stage`` (see :func:`failed_provider`)."""
    return f"{stage.value} failed: {provider}: {cause}"


def failed_provider(error: str) -> str:
    """The provider a job's ``error`` names as the one that failed it, "" when none did (a
    stall, a stop that timed out)."""
    match = _PROVIDER_FAILURE.match(error)
    return match.group(1) if match else ""


def finalize(b: Builder, status: Status, message: str, **changes: Any) -> None:
    m = b.state.metrics
    b.effects.append(
        FinalizeCampaign(status, m.qualified_leads, m.total_cost_micros, m.avg_confidence)
    )
    b.step(message, status=status, **changes)


def advance_enrichment(b: Builder) -> None:
    """Queue what the budget and the goal allow; complete the job when every lead is
    settled, the leads never queued kept as skipped for the goal (when it was reached) or
    for the budget."""
    count, allowance = dispatchable(b.state)
    m = b.state.metrics
    if count:
        b.effects.append(DispatchLeads(count, allowance, b.state.attempts))
        b.metrics(leads_dispatched=m.leads_dispatched + count)
        return
    if m.leads_in_flight > 0:
        return
    pending = m.leads_unqueued
    if pending > 0 and b.state.goal_reached:
        b.effects.append(
            CloseLeads((LeadState.PENDING,), LeadState.SKIPPED, EmailStatus.SKIPPED_GOAL)
        )
        m = b.metrics(leads_skipped_goal=m.leads_skipped_goal + pending)
    elif pending > 0:
        b.effects.append(
            CloseLeads((LeadState.PENDING,), LeadState.SKIPPED, EmailStatus.SKIPPED_BUDGET)
        )
        m = b.metrics(
            leads_skipped_budget=m.leads_skipped_budget + pending,
            leads_never_queued=m.leads_never_queued + pending,
        )
    b.step(f"Storing {m.qualified_leads} leads", stage=Stage.STORING, progress=ENRICH_END)
    finalize(b, Status.COMPLETED, _completed_message(b.state), stage=Stage.DONE, progress=100)


def _completed_message(state: JobState) -> str:
    m = state.metrics
    goal = (
        f"goal of {state.target_verified} verified emails reached; " if state.goal_reached else ""
    )
    skipped = f", {m.leads_skipped_budget} skipped for budget" if m.leads_skipped_budget else ""
    if m.leads_skipped_goal:
        skipped += f", {m.leads_skipped_goal} skipped for goal"
    return (
        f"Completed: {goal}{m.qualified_leads} leads, {m.emails_found} emails found, "
        f"{m.emails_verified} verified{skipped}, {dollars(m.total_cost_micros)} spent"
    )


def outstanding(state: JobState) -> int:
    """Tasks under way that have not reported their end: the discovery task while the job
    is discovering, else the leads queued and not settled."""
    if state.stage in DISCOVERY_STAGES:
        return 1
    return state.metrics.leads_in_flight


def close_open_leads(b: Builder, stopping: Status, states: tuple[LeadState, ...]) -> None:
    """Close the PENDING (and, with ``states``, DISPATCHED) leads of a stopping job."""
    m = b.state.metrics
    unqueued = m.leads_unqueued
    in_flight = m.leads_in_flight if LeadState.DISPATCHED in states else 0
    if unqueued <= 0 and in_flight <= 0:
        return
    b.effects.append(CloseLeads(states, LeadState.STOPPED, SKIPPED_BY_STOP[stopping]))
    b.metrics(
        leads_stopped=m.leads_stopped + max(0, unqueued) + max(0, in_flight),
        leads_stopped_unqueued=m.leads_stopped_unqueued + max(0, unqueued),
    )


def _stopped_message(status: Status, m: Metrics, error: str, note: str) -> str:
    spent = dollars(m.total_cost_micros)
    head = "Cancelled" if status == Status.CANCELLED else f"Failed: {error}"
    tail = f"; {note}" if note else ""
    return f"{head}; {m.leads_enriched} leads enriched, {spent} spent{tail}"


def end_stop(b: Builder, note: str = "") -> None:
    """The stopping job becomes final (CANCELLED or FAILED); leads still open are closed."""
    stopping = b.state.status
    close_open_leads(b, stopping, (LeadState.PENDING, LeadState.DISPATCHED))
    final = STOPPED_AS[stopping]
    finalize(b, final, _stopped_message(final, b.state.metrics, b.state.error, note))


def fail_now(b: Builder, error: str) -> None:
    """Fail the job when nothing else is under way (the failed task was the last)."""
    b.effects.append(StopWork())
    b.state = replace(b.state, status=Status.FAILING, error=error)
    end_stop(b)


def end_stop_if_settled(b: Builder) -> None:
    if outstanding(b.state) == 0:
        end_stop(b)


def begin_stop(b: Builder, stopping: Status, error: str = "") -> None:
    """Stop queueing and paying for the job; it becomes CANCELLING or FAILING until the
    work under way has reported, or final at once when nothing is under way."""
    b.effects.append(StopWork())
    close_open_leads(b, stopping, (LeadState.PENDING,))
    b.state = replace(b.state, status=stopping, error=error)
    waiting = outstanding(b.state)
    if waiting == 0:
        end_stop(b)
        return
    what = "Cancelling" if stopping == Status.CANCELLING else f"Failing: {error}"
    b.step(f"{what}; waiting for {waiting} task(s) under way")
