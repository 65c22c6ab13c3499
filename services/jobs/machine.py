"""The job state machine: pure, no I/O.

:func:`transition` takes a job's state and one event and returns the snapshots to publish
(each a new version, in order) and the effects the orchestrator must carry out in the same
transaction. Stages and progress bands follow DESIGN.md:

    DISCOVERING 0-30 (10 after search, 30 after details)  SCORING 30-50
    ENRICHING 50-90 (a step per lead)  STORING 90-100

Progress never goes backwards; every snapshot bumps the version by one; a terminal job
ignores every later event.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class Stage(StrEnum):
    QUEUED = "QUEUED"
    DISCOVERING = "DISCOVERING"
    SCORING = "SCORING"
    ENRICHING = "ENRICHING"
    STORING = "STORING"
    DONE = "DONE"


ENRICH_START, ENRICH_END = 50, 90


def dollars(micros: int) -> str:
    return f"${micros / 1_000_000:.2f}"


@dataclass(frozen=True, slots=True)
class Metrics:
    businesses_found: int = 0
    qualified_leads: int = 0
    leads_enriched: int = 0  # leads whose enrichment finished (email found or not)
    emails_found: int = 0
    emails_verified: int = 0  # verified deliverable ("valid")
    total_cost_micros: int = 0
    discovery_cost_micros: int = 0
    avg_confidence: float = 0.0
    leads_dispatched: int = 0
    leads_failed: int = 0
    leads_skipped_budget: int = 0  # never queued, or queued but unaffordable
    leads_never_queued: int = 0  # of those, the ones left pending at the end
    leads_from_cache: int = 0
    # The most one lead can cost, as the enrichment workers report it: under a budget,
    # each queued lead reserves this much.
    lead_price_micros: int = 0
    providers: dict[str, str] = field(default_factory=dict)
    cost_by_provider: dict[str, int] = field(default_factory=dict)

    @property
    def leads_settled(self) -> int:
        return self.leads_enriched + self.leads_failed + self.leads_skipped_budget

    @property
    def sandbox(self) -> bool:
        return any(name == "sandbox" for name in self.providers.values())

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["providers"] = dict(self.providers)
        out["cost_by_provider"] = dict(self.cost_by_provider)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metrics:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class JobState:
    status: Status = Status.PENDING
    stage: Stage = Stage.QUEUED
    progress: int = 0
    version: int = 1
    metrics: Metrics = field(default_factory=Metrics)
    error: str = ""
    attempts: int = 1
    max_attempts: int = 3
    budget_micros: int = 0  # 0 = no budget


# Events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveryProgressed:
    progress: int
    businesses_found: int
    cost_micros: int
    message: str
    providers: dict[str, str] = field(default_factory=dict)
    by_provider: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DiscoveryFinished:
    businesses_found: int
    scores: list[int]  # qualified places' scores, best first
    cost_micros: int
    providers: dict[str, str] = field(default_factory=dict)
    by_provider: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadEnriched:
    cost_micros: int
    email_found: bool
    verified_valid: bool
    # False when the lead was already settled (a task redelivered after a worker died):
    # its calls are billed again, but the lead is not counted twice.
    first_report: bool = True
    providers: dict[str, str] = field(default_factory=dict)
    by_provider: dict[str, int] = field(default_factory=dict)
    from_cache: bool = False
    skipped_budget: bool = False  # the lead's allowance could not pay for its first call
    lead_price_micros: int = 0


@dataclass(frozen=True, slots=True)
class TaskFailed:
    stage: Stage
    provider: str
    error: str
    permanent: bool
    cost_micros: int = 0
    lead: bool = False  # an enrichment task for one lead, not the whole job
    by_provider: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Charged:
    """Calls billed by a delivery that did not finish; nothing else changes."""

    cost_micros: int
    note: str
    lead: bool = False
    providers: dict[str, str] = field(default_factory=dict)
    by_provider: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelRequested:
    pass


@dataclass(frozen=True, slots=True)
class Stalled:
    """No change to the job for ``idle_s`` seconds (its tasks were lost or keep dying)."""

    idle_s: float


Event = (
    DiscoveryProgressed
    | DiscoveryFinished
    | LeadEnriched
    | TaskFailed
    | Charged
    | CancelRequested
    | Stalled
)


# Effects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreLeads:
    """Store the qualified places as leads and share the discovery cost among them."""


@dataclass(frozen=True, slots=True)
class DispatchLeads:
    """Queue enrichment for the next ``count`` pending leads, best score first, each
    allowed to spend ``allowance_micros`` (0 = no limit)."""

    count: int
    allowance_micros: int = 0


@dataclass(frozen=True, slots=True)
class SkipPendingLeads:
    """Mark every lead not yet dispatched as skipped for budget."""


@dataclass(frozen=True, slots=True)
class FinalizeCampaign:
    """Write the campaign's results row (count, cost, average confidence)."""


@dataclass(frozen=True, slots=True)
class RetryDiscovery:
    """Queue the discovery task again, for attempt ``attempt``."""

    attempt: int


@dataclass(frozen=True, slots=True)
class RedispatchLeads:
    """Queue enrichment again, for attempt ``attempt``, for every lead queued but unsettled."""

    attempt: int


@dataclass(frozen=True, slots=True)
class ShareCost:
    """Spread a charge that belongs to no single lead over the job's leads."""

    micros: int


@dataclass(frozen=True, slots=True)
class StopWork:
    """Tell the workers to stop paid calls for this job (cancelled or failed)."""


Effect = (
    StoreLeads
    | DispatchLeads
    | SkipPendingLeads
    | FinalizeCampaign
    | RetryDiscovery
    | RedispatchLeads
    | ShareCost
    | StopWork
)


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


# The machine ----------------------------------------------------------------------------


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

    def result(self) -> Transition:
        if not self.snapshots:
            return Transition()
        return Transition(self.snapshots, self.effects, self.state)


def _add_cost(m: Metrics, event: Event) -> Metrics:
    """Account for the money an event reports, in total and per provider."""
    micros: int = getattr(event, "cost_micros", 0)
    providers: dict[str, str] = getattr(event, "providers", {})
    by_provider: dict[str, int] = getattr(event, "by_provider", {})
    merged = {**m.providers, **providers} if providers else m.providers
    costs = dict(m.cost_by_provider)
    for provider, amount in by_provider.items():
        costs[provider] = costs.get(provider, 0) + amount
    return replace(
        m, total_cost_micros=m.total_cost_micros + micros, providers=merged, cost_by_provider=costs
    )


def _enrich_progress(m: Metrics) -> int:
    if m.qualified_leads == 0:
        return ENRICH_END
    return ENRICH_START + (ENRICH_END - ENRICH_START) * m.leads_settled // m.qualified_leads


def _in_flight(m: Metrics) -> int:
    return m.leads_dispatched + m.leads_never_queued - m.leads_settled


def _unqueued(m: Metrics) -> int:
    return m.qualified_leads - m.leads_dispatched - m.leads_never_queued


def _dispatchable(state: JobState) -> tuple[int, int]:
    """How many more leads may be queued now, and each one's allowance, so that spent plus
    what queued leads may still spend never exceeds the budget."""
    m = state.metrics
    remaining = _unqueued(m)
    if remaining <= 0:
        return 0, 0
    if state.budget_micros == 0:
        return remaining, 0
    left = state.budget_micros - m.total_cost_micros
    price = m.lead_price_micros
    if price == 0:
        # No lead has reported its price yet: one at a time, allowed all that is left.
        return (1, left) if _in_flight(m) == 0 and left > 0 else (0, 0)
    allowed = (left - _in_flight(m) * price) // price
    return max(0, min(remaining, allowed)), price


def _advance_enrichment(b: _Builder) -> None:
    """Queue what the budget allows; finish the job when every lead is settled."""
    count, allowance = _dispatchable(b.state)
    m = b.state.metrics
    if count:
        b.effects.append(DispatchLeads(count, allowance))
        b.state = replace(b.state, metrics=replace(m, leads_dispatched=m.leads_dispatched + count))
        return
    if _in_flight(m) > 0:
        return
    pending = _unqueued(m)
    if pending > 0:
        b.effects.append(SkipPendingLeads())
        b.state = replace(
            b.state,
            metrics=replace(
                m,
                leads_skipped_budget=m.leads_skipped_budget + pending,
                leads_never_queued=m.leads_never_queued + pending,
            ),
        )
    _finish(b)


def _finish(b: _Builder) -> None:
    m = b.state.metrics
    b.step(f"Storing {m.qualified_leads} leads", stage=Stage.STORING, progress=ENRICH_END)
    b.effects.append(FinalizeCampaign())
    skipped = f", {m.leads_skipped_budget} skipped for budget" if m.leads_skipped_budget else ""
    b.step(
        f"Completed: {m.qualified_leads} leads, {m.emails_found} emails found, "
        f"{m.emails_verified} verified{skipped}, {dollars(m.total_cost_micros)} spent",
        status=Status.COMPLETED,
        stage=Stage.DONE,
        progress=100,
    )


def _late_charge(state: JobState, event: Event) -> Transition:
    """A report that can no longer move the job (it is finished, or the report is from an
    earlier attempt) still carries money really spent: account for it, change nothing else."""
    cost = getattr(event, "cost_micros", 0)
    if not cost:
        return Transition()
    b = _Builder(state)
    b.step(f"Late charge of {dollars(cost)}", metrics=_add_cost(state.metrics, event))
    per_lead = isinstance(event, LeadEnriched) or (
        isinstance(event, TaskFailed | Charged) and event.lead
    )
    if not per_lead:
        b.effects.append(ShareCost(cost))
    return b.result()


def transition(state: JobState, event: Event) -> Transition:
    """Apply ``event`` to ``state``. Pure: the same inputs always give the same result."""
    if state.status.terminal:
        return _late_charge(state, event)

    b = _Builder(state)
    m = state.metrics
    match event:
        case DiscoveryProgressed():
            if state.stage not in (Stage.QUEUED, Stage.DISCOVERING):
                return _late_charge(state, event)  # from an earlier, redelivered attempt
            metrics = _add_cost(
                replace(m, businesses_found=max(m.businesses_found, event.businesses_found)),
                event,
            )
            metrics = replace(
                metrics, discovery_cost_micros=m.discovery_cost_micros + event.cost_micros
            )
            b.step(
                event.message,
                status=Status.PROCESSING,
                stage=Stage.DISCOVERING,
                progress=min(event.progress, 30),
                metrics=metrics,
            )
        case DiscoveryFinished():
            if state.stage not in (Stage.QUEUED, Stage.DISCOVERING):
                return _late_charge(state, event)
            scores = event.scores
            avg = round(sum(scores) / len(scores), 2) if scores else 0.0
            metrics = _add_cost(m, event)
            metrics = replace(
                metrics,
                businesses_found=event.businesses_found,
                discovery_cost_micros=m.discovery_cost_micros + event.cost_micros,
            )
            if state.stage == Stage.QUEUED:
                b.step("Discovering", status=Status.PROCESSING, stage=Stage.DISCOVERING)
            b.step(
                f"Scoring {event.businesses_found} businesses",
                stage=Stage.SCORING,
                progress=30,
                metrics=metrics,
            )
            metrics = replace(metrics, qualified_leads=len(scores), avg_confidence=avg)
            b.effects.append(StoreLeads())
            b.step(
                f"Qualified {len(scores)} of {event.businesses_found} businesses",
                stage=Stage.ENRICHING,
                progress=ENRICH_START,
                metrics=metrics,
            )
            _advance_enrichment(b)
        case LeadEnriched():
            metrics = _add_cost(m, event)
            if event.first_report and event.skipped_budget:
                metrics = replace(metrics, leads_skipped_budget=m.leads_skipped_budget + 1)
            elif event.first_report:
                metrics = replace(
                    metrics,
                    leads_enriched=m.leads_enriched + 1,
                    emails_found=m.emails_found + int(event.email_found),
                    emails_verified=m.emails_verified + int(event.verified_valid),
                    leads_from_cache=m.leads_from_cache + int(event.from_cache),
                )
            if event.lead_price_micros:
                metrics = replace(
                    metrics, lead_price_micros=max(m.lead_price_micros, event.lead_price_micros)
                )
            b.step(
                f"Enriching {metrics.leads_settled}/{metrics.qualified_leads} contacts, "
                f"{dollars(metrics.total_cost_micros)} so far",
                progress=_enrich_progress(metrics),
                metrics=metrics,
            )
            _advance_enrichment(b)
        case TaskFailed():
            metrics = _add_cost(m, event)
            where = f"{event.stage.value.lower()} via {event.provider}"
            if event.lead and not event.permanent:
                # One lead could not be enriched after its retries: keep the job going.
                metrics = replace(metrics, leads_failed=m.leads_failed + 1)
                b.step(
                    f"Could not enrich a lead ({where}: {event.error})",
                    progress=_enrich_progress(metrics),
                    metrics=metrics,
                )
                _advance_enrichment(b)
            elif not event.permanent and not event.lead and state.attempts < state.max_attempts:
                attempt = state.attempts + 1
                b.effects.append(RetryDiscovery(attempt))
                b.step(
                    f"Retrying discovery (attempt {attempt}/{state.max_attempts}) "
                    f"after {where}: {event.error}",
                    attempts=attempt,
                    metrics=metrics,
                )
            else:
                error = f"{event.stage.value} failed: {event.provider}: {event.error}"
                if not event.permanent:
                    error += f" after {state.attempts} attempt(s)"
                b.effects.append(StopWork())
                b.step(error, status=Status.FAILED, error=error, metrics=metrics)
        case Charged():
            metrics = _add_cost(m, event)
            if not event.lead and state.stage in (Stage.QUEUED, Stage.DISCOVERING):
                # Shared among the leads when they are stored.
                metrics = replace(
                    metrics, discovery_cost_micros=m.discovery_cost_micros + event.cost_micros
                )
            elif not event.lead:
                b.effects.append(ShareCost(event.cost_micros))
            b.step(
                f"{event.note}; {dollars(metrics.total_cost_micros)} spent so far",
                metrics=metrics,
            )
        case Stalled():
            idle = f"No progress for {event.idle_s:.0f}s in {state.stage.value}"
            if state.attempts >= state.max_attempts:
                error = f"{idle}; gave up after {state.attempts} attempt(s)"
                b.effects.append(StopWork())
                b.step(error, status=Status.FAILED, error=error)
            else:
                attempt = state.attempts + 1
                if state.stage in (Stage.QUEUED, Stage.DISCOVERING):
                    b.effects.append(RetryDiscovery(attempt))
                else:
                    b.effects.append(RedispatchLeads(attempt))
                b.step(
                    f"{idle}; retrying (attempt {attempt}/{state.max_attempts})",
                    attempts=attempt,
                )
        case CancelRequested():
            b.effects.append(StopWork())
            b.step("Cancelled", status=Status.CANCELLED)
    return b.result()
