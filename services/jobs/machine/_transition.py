"""The transition function: a job's state and one event in, snapshots and effects out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from services.jobs.machine._effects import (
    AddLeadCost,
    CloseLeads,
    DispatchLeads,
    Effect,
    FinalizeCampaign,
    RedispatchLeads,
    RetryDiscovery,
    SetLeadOutcome,
    ShareCost,
    StopWork,
    StoreLeads,
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
    Stalled,
    StopTimedOut,
)
from services.jobs.machine._state import (
    DISCOVERY_STAGES,
    NO_COST,
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

ENRICH_START, ENRICH_END = 50, 90
DISCOVERY_END = 30


@dataclass(frozen=True, slots=True)
class Snapshot:
    state: JobState
    message: str


@dataclass(frozen=True, slots=True)
class Transition:
    snapshots: list[Snapshot] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    # The state to persist (its version is the last snapshot's), or None when the event
    # changed nothing.
    state: JobState | None = None
    # Why the event was refused, when it was (it came after the job was final).
    refused: str = ""


class _Builder:
    """Accumulates snapshots: each ``step`` is one new version."""

    def __init__(self, state: JobState) -> None:
        self.state = state
        self.snapshots: list[Snapshot] = []
        self.effects: list[Effect] = []

    def step(self, message: str, **changes: Any) -> None:
        progress = max(self.state.progress, changes.pop("progress", self.state.progress))
        self.state = replace(
            self.state, progress=progress, version=self.state.version + 1, **changes
        )
        self.snapshots.append(Snapshot(self.state, message))

    def metrics(self, **changes: Any) -> Metrics:
        """Change the metrics without a new version (a later step publishes them)."""
        return self.use(replace(self.state.metrics, **changes))

    def use(self, metrics: Metrics) -> Metrics:
        """Take ``metrics`` without a new version (a later step publishes them)."""
        self.state = replace(self.state, metrics=metrics)
        return metrics

    def result(self) -> Transition:
        if not self.snapshots:
            return Transition(effects=self.effects)
        return Transition(self.snapshots, self.effects, self.state)


def _with_cost(m: Metrics, event: ReportEvent) -> Metrics:
    """``m`` with the money and the providers ``event`` reports."""
    costs = dict(m.cost_by_provider)
    for provider, amount in event.cost.by_provider.items():
        costs[provider] = costs.get(provider, 0) + amount
    providers = {**m.providers, **event.providers} if event.providers else m.providers
    return replace(
        m,
        total_cost_micros=m.total_cost_micros + event.cost.micros,
        providers=providers,
        cost_by_provider=costs,
    )


def _discovery_cost(m: Metrics, event: ReportEvent) -> Metrics:
    """``m`` with the money of a discovery report, which the leads share once stored."""
    metrics = _with_cost(m, event)
    return replace(metrics, discovery_cost_micros=m.discovery_cost_micros + event.cost.micros)


def _share(total: int, parts: int) -> list[int]:
    """Split ``total`` micro-dollars into ``parts`` exact shares, the first ones larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _enrich_progress(m: Metrics) -> int:
    if m.qualified_leads == 0:
        return ENRICH_END
    return ENRICH_START + (ENRICH_END - ENRICH_START) * m.leads_settled // m.qualified_leads


def _dispatchable(state: JobState) -> tuple[int, int]:
    """How many more leads may be queued now, and each one's allowance, so that spent plus
    what queued leads may still spend never exceeds the budget."""
    m = state.metrics
    remaining = m.leads_unqueued
    if remaining <= 0:
        return 0, 0
    if state.budget_micros == 0:
        return remaining, 0
    left = state.budget_micros - m.total_cost_micros
    price = m.lead_price_micros
    if price == 0:
        # No lead has reported its price yet: one at a time, allowed all that is left.
        return (1, left) if m.leads_in_flight == 0 and left > 0 else (0, 0)
    allowed = (left - m.leads_in_flight * price) // price
    return max(0, min(remaining, allowed)), price


# Finishing --------------------------------------------------------------------------------


def _finalize(b: _Builder, status: Status, message: str, **changes: Any) -> None:
    m = b.state.metrics
    b.effects.append(
        FinalizeCampaign(status, m.qualified_leads, m.total_cost_micros, m.avg_confidence)
    )
    b.step(message, status=status, **changes)


def _advance_enrichment(b: _Builder) -> None:
    """Queue what the budget allows; complete the job when every lead is settled."""
    count, allowance = _dispatchable(b.state)
    m = b.state.metrics
    if count:
        b.effects.append(DispatchLeads(count, allowance, b.state.attempts))
        b.metrics(leads_dispatched=m.leads_dispatched + count)
        return
    if m.leads_in_flight > 0:
        return
    pending = m.leads_unqueued
    if pending > 0:
        b.effects.append(
            CloseLeads((LeadState.PENDING,), LeadState.SKIPPED, EmailStatus.SKIPPED_BUDGET)
        )
        m = b.metrics(
            leads_skipped_budget=m.leads_skipped_budget + pending,
            leads_never_queued=m.leads_never_queued + pending,
        )
    b.step(f"Storing {m.qualified_leads} leads", stage=Stage.STORING, progress=ENRICH_END)
    skipped = f", {m.leads_skipped_budget} skipped for budget" if m.leads_skipped_budget else ""
    _finalize(
        b,
        Status.COMPLETED,
        f"Completed: {m.qualified_leads} leads, {m.emails_found} emails found, "
        f"{m.emails_verified} verified{skipped}, {dollars(m.total_cost_micros)} spent",
        stage=Stage.DONE,
        progress=100,
    )


def _outstanding(state: JobState) -> int:
    """Tasks under way that have not reported their end: the discovery task while the job
    is discovering, else the leads queued and not settled."""
    if state.stage in DISCOVERY_STAGES:
        return 1
    return state.metrics.leads_in_flight


def _close_open_leads(b: _Builder, stopping: Status, states: tuple[LeadState, ...]) -> None:
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


def _end_stop(b: _Builder, note: str = "") -> None:
    """The stopping job becomes final (CANCELLED or FAILED); leads still open are closed."""
    stopping = b.state.status
    _close_open_leads(b, stopping, (LeadState.PENDING, LeadState.DISPATCHED))
    final = STOPPED_AS[stopping]
    _finalize(b, final, _stopped_message(final, b.state.metrics, b.state.error, note))


def _fail_now(b: _Builder, error: str) -> None:
    """Fail the job when nothing else is under way (the failed task was the last)."""
    b.effects.append(StopWork())
    b.state = replace(b.state, status=Status.FAILING, error=error)
    _end_stop(b)


def _end_stop_if_settled(b: _Builder) -> None:
    if _outstanding(b.state) == 0:
        _end_stop(b)


def _begin_stop(b: _Builder, stopping: Status, error: str = "") -> None:
    """Stop queueing and paying for the job; it becomes CANCELLING or FAILING until the
    work under way has reported, or final at once when nothing is under way."""
    b.effects.append(StopWork())
    _close_open_leads(b, stopping, (LeadState.PENDING,))
    b.state = replace(b.state, status=stopping, error=error)
    waiting = _outstanding(b.state)
    if waiting == 0:
        _end_stop(b)
        return
    what = "Cancelling" if stopping == Status.CANCELLING else f"Failing: {error}"
    b.step(f"{what}; waiting for {waiting} task(s) under way")


# Reports ---------------------------------------------------------------------------------


def _late_cost(state: JobState, event: ReportEvent) -> Transition:
    """A report that can no longer move the job (from an earlier attempt, or about a lead
    already settled) still carries money really spent: account for it, nothing else."""
    if not event.cost.micros:
        return Transition()
    b = _Builder(state)
    if isinstance(event, LeadEvent):
        b.effects.append(AddLeadCost(event.lead.id, event.cost.by_provider))
    else:
        b.effects.append(ShareCost(event.cost.by_provider))
    metrics = _with_cost(state.metrics, event)
    b.step(
        f"Late charge of {dollars(event.cost.micros)}; "
        f"{dollars(metrics.total_cost_micros)} spent so far",
        metrics=metrics,
    )
    return b.result()


def _discovery_report(state: JobState, event: ReportEvent) -> Transition:
    b = _Builder(state)
    m = state.metrics
    stopping = state.status.stopping
    match event:
        case DiscoveryProgressed():
            metrics = replace(
                _discovery_cost(m, event),
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
            b.use(_discovery_cost(m, event))
            if stopping:
                _end_stop(b)
            elif not event.permanent and state.attempts < state.max_attempts:
                attempt = state.attempts + 1
                b.effects.append(RetryDiscovery(attempt))
                b.step(
                    f"Retrying discovery (attempt {attempt}/{state.max_attempts}) "
                    f"after discovering via {event.provider}: {event.error}",
                    attempts=attempt,
                )
            else:
                error = f"DISCOVERING failed: {event.provider}: {event.error}"
                if not event.permanent:
                    error += f" after {state.attempts} attempt(s)"
                _fail_now(b, error)  # the failed task was the one under way
        case DiscoveryStopped():
            b.use(_discovery_cost(m, event))
            if stopping:
                _end_stop(b)
            elif event.cost.micros:
                spent = dollars(b.state.metrics.total_cost_micros)
                b.step(f"Discovery interrupted; {spent} spent so far")
        case Charged():
            metrics = _discovery_cost(m, event)
            b.step(
                f"{event.note}; {dollars(metrics.total_cost_micros)} spent so far",
                metrics=metrics,
            )
    return b.result()


def _discovered(b: _Builder, event: DiscoveryFinished) -> None:
    """Discovery's result: store the leads, then enrich them (or, stopping, close them)."""
    state = b.state
    m = state.metrics
    scores = [place.confidence_score for place in event.places]
    avg = round(sum(scores) / len(scores), 2) if scores else 0.0
    metrics = replace(_discovery_cost(m, event), businesses_found=event.businesses_found)
    places_provider = metrics.providers.get("places", "places")
    shares = tuple(_share(metrics.discovery_cost_micros, max(1, len(scores))))[: len(scores)]
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
        _end_stop(b)
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
    _advance_enrichment(b)


def _lead_report(state: JobState, event: LeadEvent) -> Transition:
    if event.lead.state != LeadState.DISPATCHED or isinstance(event, LeadCharged):
        # Already settled (a task run twice) or charges of a delivery that goes on later.
        return _late_cost(state, event)
    if isinstance(event, LeadStopped) and not state.status.stopping:
        # Only a stopping job's tasks stop: a stray notice leaves the lead to its task.
        return _late_cost(state, event)
    b = _Builder(state)
    if event.cost.micros:
        b.effects.append(AddLeadCost(event.lead.id, event.cost.by_provider))
    metrics = _with_cost(state.metrics, event)
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
                    lead_id, LeadState.ENRICHED, event.email_status, event.email, event.from_cache
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
                permanent_failure = f"ENRICHING failed: {event.provider}: {event.error}"
        case LeadStopped():
            skipped = SKIPPED_BY_STOP[state.status]
            outcome = SetLeadOutcome(lead_id, LeadState.STOPPED, skipped)
            metrics = replace(metrics, leads_stopped=m.leads_stopped + 1)
            message = f"A task stopped; {dollars(metrics.total_cost_micros)} spent so far"
    b.effects.append(outcome)
    b.step(message, progress=_enrich_progress(metrics), metrics=metrics)
    if state.status.stopping:
        _end_stop_if_settled(b)
    elif permanent_failure:
        _begin_stop(b, Status.FAILING, permanent_failure)
    else:
        _advance_enrichment(b)
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
    b = _Builder(state)
    idle = f"No progress for {event.idle_s:.0f}s in {state.stage.value}"
    if state.attempts >= state.max_attempts:
        # Nothing has reported for the whole stall timeout: nothing to wait for.
        _fail_now(b, f"{idle}; gave up after {state.attempts} attempt(s)")
        return b.result()
    attempt = state.attempts + 1
    if state.stage in DISCOVERY_STAGES:
        b.effects.append(RetryDiscovery(attempt))
    else:
        b.effects.append(RedispatchLeads(attempt, _redispatch_allowance(state)))
    b.step(f"{idle}; retrying (attempt {attempt}/{state.max_attempts})", attempts=attempt)
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
            b = _Builder(state)
            _begin_stop(b, Status.CANCELLING)
            return b.result()
        case Stalled():
            if state.status.stopping:
                return Transition()  # the stop deadline is the watchdog's other check
            return _stalled(state, event)
        case StopTimedOut():
            if not state.status.stopping:
                return Transition()
            b = _Builder(state)
            late = _outstanding(state)
            _end_stop(b, f"{late} task(s) did not report within {event.waited_s:.0f}s")
            return b.result()
    return _report(state, event)
