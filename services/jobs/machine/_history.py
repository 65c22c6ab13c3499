"""A job's timeline: what a transition means to a reader of the job's history.

Pure, like the rest of the machine: :func:`history_of` reads the state before an event,
the event and the transition it made, and names the moments worth keeping (a stage
entered, a retry and its cause, a provider's failure, a budget stop, the goal of
verified emails reached, a cancel asked for, the final status).
:mod:`services.jobs.effects` writes them in the same transaction as the change they
describe. Most reports (a lead enriched, a charge, progress) are no such moment: they
give nothing, so the report path writes no row for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.jobs.machine._builder import Transition
from services.jobs.machine._effects import (
    CloseLeads,
    RedispatchLeads,
    RetryDiscovery,
)
from services.jobs.machine._events import (
    CancelRequested,
    DiscoveryFailed,
    Event,
    LeadFailed,
    Stalled,
)
from services.jobs.machine._state import EmailStatus, JobState, Stage, dollars

# Entries one change may give at most: an entry's place in its job's order is the
# version it came with times this, plus its index within the change.
PER_CHANGE = 16


class HistoryKind(StrEnum):
    """What an entry of a job's history records (``JobEvent.kind``)."""

    SUBMITTED = "submitted"  # the job was recorded (SubmitCampaign, RetryJob, a schedule)
    STAGE = "stage"  # the job entered a stage
    RETRY = "retry"  # its work was queued again: a stall (watchdog) or a task's failure
    PROVIDER_ERROR = "provider_error"  # a worker reported a provider's failure
    BUDGET_STOP = "budget_stop"  # the budget left leads unenriched
    GOAL_REACHED = "goal_reached"  # the goal of verified emails was reached
    CANCEL_REQUESTED = "cancel_requested"  # CancelJob
    FINISHED = "finished"  # the final status, with its error and spend
    RETRIED_BY = "retried_by"  # RetryJob started another job from this one


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    kind: HistoryKind
    stage: Stage
    message: str
    version: int  # the job's version the entry came with


def seq_of(entries: list[HistoryEntry]) -> list[int]:
    """Each entry's place in its job's order: by version, then as listed. A final job's
    version never changes again and it is retried once, so its ``retried_by`` entry takes
    the last place of its version."""
    seqs, index, last = [], 0, -1
    for entry in entries:
        index = index + 1 if entry.version == last else 0
        last = entry.version
        place = (
            PER_CHANGE - 1 if entry.kind == HistoryKind.RETRIED_BY else min(index, PER_CHANGE - 2)
        )
        seqs.append(entry.version * PER_CHANGE + place)
    return seqs


def _goal_reached(result: Transition) -> HistoryEntry:
    """The entry of the change in which the job's goal of verified emails was reached."""
    assert result.state is not None
    m = result.state.metrics
    reached = next(s for s in result.snapshots if s.state.goal_reached)
    return HistoryEntry(
        HistoryKind.GOAL_REACHED,
        reached.state.stage,
        f"Goal of {result.state.target_verified} verified emails reached: "
        f"{m.leads_skipped_goal + m.leads_unqueued} lead(s) not enriched, "
        f"{dollars(m.total_cost_micros)} spent",
        reached.state.version,
    )


def history_of(before: JobState, event: Event, result: Transition) -> list[HistoryEntry]:
    """The entries ``event`` adds to the history of a job that was ``before`` and made
    ``result``; none for most reports."""
    if result.state is None or not result.snapshots:
        return []
    out: list[HistoryEntry] = []
    first = result.snapshots[0]
    match event:
        case CancelRequested():
            out.append(
                HistoryEntry(
                    HistoryKind.CANCEL_REQUESTED,
                    first.state.stage,
                    first.message,
                    first.state.version,
                )
            )
        case Stalled() if any(
            isinstance(e, RetryDiscovery | RedispatchLeads) for e in result.effects
        ):
            out.append(
                HistoryEntry(HistoryKind.RETRY, before.stage, first.message, first.state.version)
            )
        case DiscoveryFailed() if any(isinstance(e, RetryDiscovery) for e in result.effects):
            out.append(
                HistoryEntry(HistoryKind.RETRY, before.stage, first.message, first.state.version)
            )
        case DiscoveryFailed(provider=provider, error=error):
            out.append(
                HistoryEntry(
                    HistoryKind.PROVIDER_ERROR,
                    before.stage,
                    f"Discovering via {provider} failed: {error}",
                    first.state.version,
                )
            )
        case LeadFailed():
            out.append(
                HistoryEntry(
                    HistoryKind.PROVIDER_ERROR, before.stage, first.message, first.state.version
                )
            )
    stage = before.stage
    for snap in result.snapshots:
        entered = snap.state.stage
        if entered != stage and entered not in (Stage.QUEUED, Stage.DONE):
            out.append(HistoryEntry(HistoryKind.STAGE, entered, snap.message, snap.state.version))
        stage = entered
    budget_closed = any(
        isinstance(e, CloseLeads) and e.email_status == EmailStatus.SKIPPED_BUDGET
        for e in result.effects
    )
    if budget_closed:
        m = result.state.metrics
        skipped = m.leads_never_queued - before.metrics.leads_never_queued
        out.append(
            HistoryEntry(
                HistoryKind.BUDGET_STOP,
                result.snapshots[0].state.stage,
                f"Budget of {dollars(result.state.budget_micros)} reached: {skipped} lead(s) "
                f"not enriched, {dollars(m.total_cost_micros)} spent",
                result.snapshots[0].state.version,
            )
        )
    if result.state.goal_reached and not before.goal_reached:
        out.append(_goal_reached(result))
    if result.state.status.terminal and not before.status.terminal:
        last = result.snapshots[-1]
        out.append(
            HistoryEntry(HistoryKind.FINISHED, last.state.stage, last.message, last.state.version)
        )
    return sorted(out, key=lambda entry: entry.version)
