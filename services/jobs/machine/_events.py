"""Events: what happened to a job, as the machine takes it.

Worker reports become events in :mod:`services.jobs.reports`; the commands (cancel) and the
watchdog (stall, stop deadline) make the others. Every report event carries the money it
puts on the books (``cost``) and the providers that served it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prospect.v1 import work_pb2
from services.jobs.machine._state import NO_COST, Cost, EmailStatus, LeadRef


@dataclass(frozen=True, slots=True)
class DiscoveryProgressed:
    progress: int
    businesses_found: int
    message: str
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DiscoveryFinished:
    businesses_found: int
    places: tuple[work_pb2.Place, ...]  # qualified places, best score first
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)
    skipped_known: int = 0  # places the schedule already delivered, left out


@dataclass(frozen=True, slots=True)
class DiscoveryFailed:
    provider: str
    error: str
    permanent: bool
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DiscoveryStopped:
    """The discovery task ended without a result because the job was stopping."""

    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Charged:
    """Calls billed by a delivery that did not finish, for no one lead."""

    note: str
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadEnriched:
    lead: LeadRef
    email: str
    email_status: EmailStatus
    from_cache: bool = False
    # The most one lead can cost with the reporting worker's providers and prices.
    lead_price_micros: int = 0
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)
    # Which email-waterfall step found ``email``, and what each step cost (micro-dollars).
    email_source: str = ""
    cost_by_step: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadFailed:
    lead: LeadRef
    provider: str
    error: str
    permanent: bool
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadStopped:
    """The lead's task ended without a result because the job was stopping."""

    lead: LeadRef
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadCharged:
    """Calls billed for a lead by a delivery that will be retried."""

    lead: LeadRef
    note: str
    cost: Cost = NO_COST
    providers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelRequested:
    pass


@dataclass(frozen=True, slots=True)
class Stalled:
    """No change to the job for ``idle_s`` seconds (its tasks were lost or keep dying)."""

    idle_s: float


@dataclass(frozen=True, slots=True)
class StopTimedOut:
    """A stopping job waited ``waited_s`` seconds for its work under way to report."""

    waited_s: float


@dataclass(frozen=True, slots=True)
class RetryStarted:
    """A retry job (RetryJob) starts from the leads its first job stored, copied: those
    the first job enriched come with their results (``done`` of ``qualified``, at no cost
    to this job), the rest are enriched now."""

    retry_of: str
    businesses_found: int
    qualified: int
    done: int
    emails_found: int
    emails_verified: int
    avg_confidence: float


ReportEvent = (
    DiscoveryProgressed
    | DiscoveryFinished
    | DiscoveryFailed
    | DiscoveryStopped
    | Charged
    | LeadEnriched
    | LeadFailed
    | LeadStopped
    | LeadCharged
)
LeadEvent = LeadEnriched | LeadFailed | LeadStopped | LeadCharged
Event = ReportEvent | CancelRequested | Stalled | StopTimedOut | RetryStarted
