"""What the machine knows about a job and its leads: statuses, stages, lead states, metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    # Stopping: no paid call starts any more; the job waits for the work under way to
    # report (at most STOP_TIMEOUT_S), then becomes CANCELLED or FAILED.
    CANCELLING = "CANCELLING"
    FAILING = "FAILING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Final: nothing about the job or its leads changes again."""
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    @property
    def stopping(self) -> bool:
        return self in (Status.CANCELLING, Status.FAILING)


# Where each stopping status ends.
STOPPED_AS = {Status.CANCELLING: Status.CANCELLED, Status.FAILING: Status.FAILED}


class Stage(StrEnum):
    QUEUED = "QUEUED"
    DISCOVERING = "DISCOVERING"
    SCORING = "SCORING"
    ENRICHING = "ENRICHING"
    STORING = "STORING"
    DONE = "DONE"


DISCOVERY_STAGES = (Stage.QUEUED, Stage.DISCOVERING)


class LeadState(StrEnum):
    """A lead's life: PENDING -> DISPATCHED -> ENRICHED | SKIPPED | FAILED | STOPPED.

    PENDING leads may also go straight to SKIPPED (the budget ran out, or the job's goal
    of verified emails was reached, before they were queued) or STOPPED (the job was
    cancelled or failed first). Only a DISPATCHED lead is settled by a report; a settled
    lead never changes state again."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    ENRICHED = "enriched"
    SKIPPED = "skipped"
    FAILED = "failed"
    STOPPED = "stopped"


class EmailStatus(StrEnum):
    """What a lead's email is, as the API shows it (``Lead.email_status``)."""

    PENDING = "pending"  # not enriched yet
    # From the verifier.
    VALID = "valid"
    INVALID = "invalid"
    DISPOSABLE = "disposable"
    CATCHALL = "catchall"
    UNKNOWN = "unknown"
    # From the enrichment worker.
    UNVERIFIED = "unverified"  # found; verification not asked for, or not affordable
    NOT_FOUND = "not_found"
    NO_WEBSITE = "no_website"
    SKIPPED_BUDGET = "skipped_budget"
    # From the jobs service.
    ERROR = "error"  # enrichment kept failing
    SKIPPED_CANCELLED = "skipped_cancelled"  # the job was cancelled before it was enriched
    SKIPPED_FAILED = "skipped_failed"  # the job failed before it was enriched
    SKIPPED_GOAL = "skipped_goal"  # the job's goal of verified emails was reached first


# What an enrichment worker may report for a lead (anything else is refused).
WORKER_EMAIL_STATUSES = frozenset(
    {
        EmailStatus.VALID,
        EmailStatus.INVALID,
        EmailStatus.DISPOSABLE,
        EmailStatus.CATCHALL,
        EmailStatus.UNKNOWN,
        EmailStatus.UNVERIFIED,
        EmailStatus.NOT_FOUND,
        EmailStatus.NO_WEBSITE,
        EmailStatus.SKIPPED_BUDGET,
    }
)

SKIPPED_BY_STOP = {
    Status.CANCELLING: EmailStatus.SKIPPED_CANCELLED,
    Status.FAILING: EmailStatus.SKIPPED_FAILED,
}


def dollars(micros: int) -> str:
    return f"${micros / 1_000_000:.2f}"


@dataclass(frozen=True, slots=True)
class Cost:
    """Money a report puts on the books, in micro-dollars per provider."""

    by_provider: Mapping[str, int] = field(default_factory=dict)

    @property
    def micros(self) -> int:
        return sum(self.by_provider.values())


NO_COST = Cost()


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
    leads_stopped: int = 0  # closed because the job was cancelled or failed
    leads_stopped_unqueued: int = 0  # of those, the ones never queued
    leads_from_cache: int = 0
    # Places an earlier run of the job's schedule delivered (only_new_leads): not leads.
    leads_skipped_known: int = 0
    # Never queued: the job's goal of verified emails was reached first.
    leads_skipped_goal: int = 0
    # The most one lead can cost, as the enrichment workers report it: under a budget,
    # each queued lead reserves this much.
    lead_price_micros: int = 0
    providers: dict[str, str] = field(default_factory=dict)
    cost_by_provider: dict[str, int] = field(default_factory=dict)

    @property
    def leads_settled(self) -> int:
        return (
            self.leads_enriched
            + self.leads_failed
            + self.leads_skipped_budget
            + self.leads_stopped
            + self.leads_skipped_goal
        )

    @property
    def _closed_unqueued(self) -> int:
        """Leads closed without ever being queued."""
        return self.leads_never_queued + self.leads_stopped_unqueued + self.leads_skipped_goal

    @property
    def leads_in_flight(self) -> int:
        """Leads queued for enrichment and not settled yet."""
        return self.leads_dispatched + self._closed_unqueued - self.leads_settled

    @property
    def leads_unqueued(self) -> int:
        """Leads still PENDING."""
        return self.qualified_leads - self.leads_dispatched - self._closed_unqueued

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
    target_verified: int = 0  # the goal of verified emails; 0 = no goal

    @property
    def goal_reached(self) -> bool:
        """The job has a goal of verified emails and has that many."""
        return 0 < self.target_verified <= self.metrics.emails_verified


@dataclass(frozen=True, slots=True)
class LeadRef:
    """The lead a report is about, as stored when the report is read."""

    id: str
    state: LeadState
