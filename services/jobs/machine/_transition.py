"""The transition function: a job's state and one event in, snapshots and effects out."""

from __future__ import annotations

from dataclasses import replace

from services.common.money import split_micros
from services.jobs.machine._builder import (
    DISCOVERY_END,
    ENRICH_START,
    Builder,
    Transition,
    discovery_cost,
    enrich_progress,
    with_cost,
)
from services.jobs.machine._effects import (
    AddLeadCost,
    RedispatchLeads,
    RetryDiscovery,
    SetLeadOutcome,
    ShareCost,
    StoreLeads,
)
from services.jobs.machine._endings import (
    advance_enrichment,
    begin_stop,
    end_stop,
    end_stop_if_settled,
    fail_now,
    outstanding,
    provider_failure,
)
from services.jobs.machine._events import (
    CancelRequested,
    Charged,
    DiscoveryFailed,
    DiscoveryFinished,
    DiscoveryProgressed,
    DiscoveryStopped,
    Event,
    LeadCharged,
    LeadEnriched,
    LeadEvent,
    LeadFailed,
    LeadStopped,
    ReportEvent,
    RetryStarted,
    Stalled,
    StopTimedOut,
)
from services.jobs.machine._state import (
    DISCOVERY_STAGES,
    NO_COST,
    SKIPPED_BY_STOP,
    EmailStatus,
    JobState,
    LeadState,
    Stage,
    Status,
    dollars,
)

# Reports ---------------------------------------------------------------------------------


def _late_cost(state: JobState, event: ReportEvent) -> Transition:
    """A report that can no longer move the job (from an earlier attempt, or about a lead
    already settled) still carries money really spent: account for it, nothing else."""
    if not event.cost.micros:
        return Transition()
    b = Builder(state)
    if isinstance(event, LeadEvent):
        b.effects.append(AddLeadCost(event.lead.id, event.cost.by_provider))
    else:
        b.effects.append(ShareCost(event.cost.by_provider))
    metrics = with_cost(state.metrics, event)
    b.step(
        f"Late charge of {dollars(event.cost.micros)}; "
        f"{dollars(metrics.total_cost_micros)} spent so far",
        metrics=metrics,
    )
    return b.result()


def _discovery_report(state: JobState, event: ReportEvent) -> Transition:
    b = Builder(state)
    m = state.metrics
    stopping = state.status.stopping
    match event:
        case DiscoveryProgressed():
            metrics = replace(
                discovery_cost(m, event),
                businesses_found=max(m.businesses_found, event.businesses_found),
            )
            if stopping:
                b.step(f"{event.message} (stopping)", metrics=metrics)
            else:
                b.step(
                    event.message,
                    status=Status.PROCESSING,
                    stage=Stage.DISCOVERING,
                    progress=min(event.progress, DISCOVERY_END),
                    metrics=metrics,
                )
        case DiscoveryFinished():
            _discovered(b, event)
        case DiscoveryFailed():
            b.use(discovery_cost(m, event))
            if stopping:
                end_stop(b)
            elif not event.permanent and state.attempts < state.max_attempts:
                attempt = state.attempts + 1
                b.effects.append(RetryDiscovery(attempt))
                b.step(
                    f"Retrying discovery (attempt {attempt}/{state.max_attempts}) "
                    f"after discovering via {event.provider}: {event.error}",
                    attempts=attempt,
                )
            else:
                error = provider_failure(Stage.DISCOVERING, event.provider, event.error)
                if not event.permanent:
                    error += f" after {state.attempts} attempt(s)"
                fail_now(b, error)  # the failed task was the one under way
        case DiscoveryStopped():
            b.use(discovery_cost(m, event))
            if stopping:
                end_stop(b)
            elif event.cost.micros:
                spent = dollars(b.state.metrics.total_cost_micros)
                b.step(f"Discovery interrupted; {spent} spent so far")
        case Charged():
            metrics = discovery_cost(m, event)
            b.step(
                f"{event.note}; {dollars(metrics.total_cost_micros)} spent so far",
                metrics=metrics,
            )
    return b.result()


def _discovered(b: Builder, event: DiscoveryFinished) -> None:
    """Discovery's result: store the leads, then enrich them (or, stopping, close them)."""
    state = b.state
    m = state.metrics
    scores = [place.confidence_score for place in event.places]
    avg = round(sum(scores) / len(scores), 2) if scores else 0.0
    metrics = replace(
        discovery_cost(m, event),
        businesses_found=event.businesses_found,
        leads_skipped_known=event.skipped_known,
    )
    places_provider = metrics.providers.get("places", "places")
    shares = tuple(split_micros(metrics.discovery_cost_micros, max(1, len(scores))))[: len(scores)]
    if state.status.stopping:
        n = len(scores)
        b.effects.append(
            StoreLeads(
                event.places,
                shares,
                places_provider,
                LeadState.STOPPED,
                SKIPPED_BY_STOP[state.status],
            )
        )
        b.use(
            replace(
                metrics,
                qualified_leads=n,
                avg_confidence=avg,
                leads_stopped=m.leads_stopped + n,
                leads_stopped_unqueued=m.leads_stopped_unqueued + n,
            )
        )
        end_stop(b)
        return
    if state.stage == Stage.QUEUED:
        b.step("Discovering", status=Status.PROCESSING, stage=Stage.DISCOVERING)
    b.step(
        f"Scoring {event.businesses_found} businesses",
        stage=Stage.SCORING,
        progress=DISCOVERY_END,
        metrics=metrics,
    )
    b.effects.append(StoreLeads(event.places, shares, places_provider))
    b.step(
        f"Qualified {len(scores)} of {event.businesses_found} businesses",
        stage=Stage.ENRICHING,
        progress=ENRICH_START,
        metrics=replace(metrics, qualified_leads=len(scores), avg_confidence=avg),
    )
    advance_enrichment(b)


def _lead_report(state: JobState, event: LeadEvent) -> Transition:
    if event.lead.state != LeadState.DISPATCHED or isinstance(event, LeadCharged):
        # Already settled (a task run twice) or charges of a delivery that goes on later.
        return _late_cost(state, event)
    if isinstance(event, LeadStopped) and not state.status.stopping:
        # Only a stopping job's tasks stop: a stray notice leaves the lead to its task.
        return _late_cost(state, event)
    b = Builder(state)
    if event.cost.micros:
        b.effects.append(AddLeadCost(event.lead.id, event.cost.by_provider))
    metrics = with_cost(state.metrics, event)
    m = state.metrics
    lead_id = event.lead.id
    permanent_failure = ""
    match event:
        case LeadEnriched():
            if event.email_status == EmailStatus.SKIPPED_BUDGET:
                outcome = SetLeadOutcome(lead_id, LeadState.SKIPPED, event.email_status)
                metrics = replace(metrics, leads_skipped_budget=m.leads_skipped_budget + 1)
            else:
                outcome = SetLeadOutcome(
                    lead_id,
                    LeadState.ENRICHED,
                    event.email_status,
                    event.email,
                    event.from_cache,
                    event.email_source,
                    event.cost_by_step,
                )
                metrics = replace(
                    metrics,
                    leads_enriched=m.leads_enriched + 1,
                    emails_found=m.emails_found + int(bool(event.email)),
                    emails_verified=m.emails_verified
                    + int(event.email_status == EmailStatus.VALID),
                    leads_from_cache=m.leads_from_cache + int(event.from_cache),
                )
            if event.lead_price_micros:
                metrics = replace(
                    metrics, lead_price_micros=max(m.lead_price_micros, event.lead_price_micros)
                )
            message = (
                f"Enriching {metrics.leads_settled}/{metrics.qualified_leads} contacts, "
                f"{dollars(metrics.total_cost_micros)} so far"
            )
        case LeadFailed():
            outcome = SetLeadOutcome(lead_id, LeadState.FAILED, EmailStatus.ERROR)
            metrics = replace(metrics, leads_failed=m.leads_failed + 1)
            where = f"enriching via {event.provider}"
            message = f"Could not enrich a lead ({where}: {event.error})"
            if event.permanent:
                permanent_failure = provider_failure(Stage.ENRICHING, event.provider, event.error)
        case LeadStopped():
            skipped = SKIPPED_BY_STOP[state.status]
            outcome = SetLeadOutcome(lead_id, LeadState.STOPPED, skipped)
            metrics = replace(metrics, leads_stopped=m.leads_stopped + 1)
            message = f"A task stopped; {dollars(metrics.total_cost_micros)} spent so far"
    b.effects.append(outcome)
    b.step(message, progress=enrich_progress(metrics), metrics=metrics)
    if state.status.stopping:
        end_stop_if_settled(b)
    elif permanent_failure:
        begin_stop(b, Status.FAILING, permanent_failure)
    else:
        advance_enrichment(b)
    return b.result()


def _report(state: JobState, event: ReportEvent) -> Transition:
    if isinstance(event, LeadEvent):
        return _lead_report(state, event)
    if state.stage not in DISCOVERY_STAGES:
        # From an earlier, redelivered attempt: its money only.
        return _late_cost(state, event)
    return _discovery_report(state, event)


# Commands and the watchdog -----------------------------------------------------------------


def _redispatch_allowance(state: JobState) -> int:
    """What each lead queued again may spend: as when first queued (its price, or a share
    of what is left while no lead has reported its price). Under a budget never 0, which
    a task reads as "no limit": with nothing left, 1 micro-dollar, which pays for nothing."""
    if not state.budget_micros:
        return 0
    m = state.metrics
    if m.lead_price_micros:
        return m.lead_price_micros
    left = state.budget_micros - m.total_cost_micros
    return max(1, left // max(1, m.leads_in_flight))


def _stalled(state: JobState, event: Stalled) -> Transition:
    b = Builder(state)
    idle = f"No progress for {event.idle_s:.0f}s in {state.stage.value}"
    if state.attempts >= state.max_attempts:
        # Nothing has reported for the whole stall timeout: nothing to wait for.
        fail_now(b, f"{idle}; gave up after {state.attempts} attempt(s)")
        return b.result()
    attempt = state.attempts + 1
    if state.stage in DISCOVERY_STAGES:
        b.effects.append(RetryDiscovery(attempt))
    else:
        b.effects.append(RedispatchLeads(attempt, _redispatch_allowance(state)))
    b.step(f"{idle}; retrying (attempt {attempt}/{state.max_attempts})", attempts=attempt)
    return b.result()


def _retry_started(state: JobState, event: RetryStarted) -> Transition:
    """A retry job's first change: straight to enriching the leads copied from its first
    job (those already enriched count as settled, from the cache, at no cost)."""
    if state.stage != Stage.QUEUED:
        return Transition()
    n = event.done
    metrics = replace(
        state.metrics,
        businesses_found=event.businesses_found,
        qualified_leads=event.qualified,
        avg_confidence=event.avg_confidence,
        leads_dispatched=n,
        leads_enriched=n,
        leads_from_cache=n,
        emails_found=event.emails_found,
        emails_verified=event.emails_verified,
    )
    b = Builder(state)
    b.step(
        f"Retrying job {event.retry_of}: {event.qualified} leads found before, "
        f"{n} already enriched",
        status=Status.PROCESSING,
        stage=Stage.ENRICHING,
        progress=enrich_progress(metrics),
        metrics=metrics,
    )
    advance_enrichment(b)
    return b.result()


def transition(state: JobState, event: Event) -> Transition:
    """Apply ``event`` to ``state``. Pure: the same inputs always give the same result.

    A final job (COMPLETED, FAILED, CANCELLED) refuses every event: nothing about it
    changes again. A stopping job (CANCELLING, FAILING) takes its tasks' last reports and
    becomes final when none is under way, or when the watchdog says it waited long enough.
    """
    if state.status.terminal:
        cost = getattr(event, "cost", NO_COST).micros
        return Transition(refused=f"the job is {state.status.value} ({dollars(cost)} refused)")
    match event:
        case CancelRequested():
            if state.status.stopping:
                return Transition()  # already stopping
            b = Builder(state)
            begin_stop(b, Status.CANCELLING)
            return b.result()
        case Stalled():
            if state.status.stopping:
                return Transition()  # the stop deadline is the watchdog's other check
            return _stalled(state, event)
        case RetryStarted():
            return _retry_started(state, event)
        case StopTimedOut():
            if not state.status.stopping:
                return Transition()
            b = Builder(state)
            late = outstanding(state)
            end_stop(b, f"{late} task(s) did not report within {event.waited_s:.0f}s")
            return b.result()
    return _report(state, event)
