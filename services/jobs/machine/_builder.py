"""How a transition is built: snapshots (each a new version), the effects gathered on the
way, and the arithmetic of money, progress and budgets the rules share."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from services.jobs.machine._effects import Effect
from services.jobs.machine._events import ReportEvent
from services.jobs.machine._state import JobState, Metrics

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


class Builder:
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


def with_cost(m: Metrics, event: ReportEvent) -> Metrics:
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


def discovery_cost(m: Metrics, event: ReportEvent) -> Metrics:
    """``m`` with the money of a discovery report, which the leads share once stored."""
    metrics = with_cost(m, event)
    return replace(metrics, discovery_cost_micros=m.discovery_cost_micros + event.cost.micros)


def enrich_progress(m: Metrics) -> int:
    if m.qualified_leads == 0:
        return ENRICH_END
    return ENRICH_START + (ENRICH_END - ENRICH_START) * m.leads_settled // m.qualified_leads


def dispatchable(state: JobState) -> tuple[int, int]:
    """How many more leads may be queued now, and each one's allowance, so that spent plus
    what queued leads may still spend never exceeds the budget, and, under a goal of
    verified emails, leads in flight never outnumber the verified emails still missing
    (so when the goal is reached no lead is queued or under way: no paid call starts)."""
    m = state.metrics
    remaining = m.leads_unqueued
    if state.target_verified:
        missing = state.target_verified - m.emails_verified - m.leads_in_flight
        remaining = min(remaining, missing)
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
