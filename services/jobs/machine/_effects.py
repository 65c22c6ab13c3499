"""Effects: what a transition asks to be done in the same transaction. Each carries all
its data; :mod:`services.jobs.effects` carries them out without looking anywhere else."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prospect.v1 import work_pb2
from services.jobs.machine._state import EmailStatus, LeadState, Status


@dataclass(frozen=True, slots=True)
class StoreLeads:
    """Store the qualified places as leads, ranked as given, each with its share of the
    discovery cost (``shares[rank]`` micro-dollars of ``provider``)."""

    places: tuple[work_pb2.Place, ...]
    shares: tuple[int, ...]
    provider: str
    state: LeadState = LeadState.PENDING
    email_status: EmailStatus = EmailStatus.PENDING


@dataclass(frozen=True, slots=True)
class DispatchLeads:
    """Queue enrichment for the next ``count`` PENDING leads, best score first, each
    allowed to spend ``allowance_micros`` (0 = no limit); they become DISPATCHED."""

    count: int
    allowance_micros: int = 0
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class RedispatchLeads:
    """Queue enrichment again, as attempt ``attempt``, for every DISPATCHED lead."""

    attempt: int
    allowance_micros: int = 0


@dataclass(frozen=True, slots=True)
class SetLeadOutcome:
    """A dispatched lead is settled."""

    lead_id: str
    state: LeadState
    email_status: EmailStatus
    email: str = ""
    from_cache: bool = False
    email_source: str = ""
    cost_by_step: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CloseLeads:
    """Every lead of the job in one of ``states`` becomes ``state`` with ``email_status``."""

    states: tuple[LeadState, ...]
    state: LeadState
    email_status: EmailStatus


@dataclass(frozen=True, slots=True)
class AddLeadCost:
    """Calls made for one lead: on its books."""

    lead_id: str
    by_provider: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ShareCost:
    """Calls that belong to no single lead, spread over the job's leads (each provider's
    amount in exact shares)."""

    by_provider: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class FinalizeCampaign:
    """The job is final: write the campaign's results row."""

    status: Status
    results_count: int
    total_cost_micros: int
    avg_confidence: float


@dataclass(frozen=True, slots=True)
class RetryDiscovery:
    """Queue the discovery task again, for attempt ``attempt``."""

    attempt: int


@dataclass(frozen=True, slots=True)
class StopWork:
    """Tell the workers to start no paid call for this job any more."""


Effect = (
    StoreLeads
    | DispatchLeads
    | RedispatchLeads
    | SetLeadOutcome
    | CloseLeads
    | AddLeadCost
    | ShareCost
    | FinalizeCampaign
    | RetryDiscovery
    | StopWork
)
