"""The job and lead state machine: pure, no I/O.

:func:`transition` takes a job's state and one event and returns the snapshots to publish
(each a new version, in order) and the effects to carry out in the same transaction
(:mod:`services.jobs.effects`). Stages and progress bands:

    DISCOVERING 0-30 (10 after search, 30 after details)  SCORING 30-50
    ENRICHING 50-90 (a step per lead)  STORING 90-100

Statuses: PENDING -> PROCESSING -> COMPLETED, or through CANCELLING / FAILING (stopping:
waiting for the work under way to report) to CANCELLED / FAILED. Progress never goes
backwards; every snapshot bumps the version by one; a final job refuses every event.
Leads: PENDING -> DISPATCHED -> ENRICHED | SKIPPED | FAILED | STOPPED (see
:class:`LeadState`).

Modules: ``_state`` (what is known), ``_events`` (what happens), ``_effects`` (what must be
done), ``_transition`` (the rules), ``_endings`` (how a job completes or stops),
``_builder`` (snapshots, and the money and budget arithmetic).
"""

from services.jobs.machine._builder import Snapshot, Transition
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
from services.jobs.machine._endings import failed_provider
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
from services.jobs.machine._history import HistoryEntry, HistoryKind, history_of, seq_of
from services.jobs.machine._state import (
    NO_COST,
    WORKER_EMAIL_STATUSES,
    Cost,
    EmailStatus,
    JobState,
    LeadRef,
    LeadState,
    Metrics,
    Stage,
    Status,
    dollars,
)
from services.jobs.machine._transition import transition

__all__ = [
    "NO_COST",
    "WORKER_EMAIL_STATUSES",
    "AddLeadCost",
    "CancelRequested",
    "Charged",
    "CloseLeads",
    "Cost",
    "DiscoveryFailed",
    "DiscoveryFinished",
    "DiscoveryProgressed",
    "DiscoveryStopped",
    "DispatchLeads",
    "Effect",
    "EmailStatus",
    "Event",
    "FinalizeCampaign",
    "HistoryEntry",
    "HistoryKind",
    "JobState",
    "LeadCharged",
    "LeadEnriched",
    "LeadEvent",
    "LeadFailed",
    "LeadRef",
    "LeadState",
    "LeadStopped",
    "Metrics",
    "RedispatchLeads",
    "ReportEvent",
    "RetryDiscovery",
    "RetryStarted",
    "SetLeadOutcome",
    "ShareCost",
    "Snapshot",
    "Stage",
    "Stalled",
    "Status",
    "StopTimedOut",
    "StopWork",
    "StoreLeads",
    "Transition",
    "dollars",
    "failed_provider",
    "history_of",
    "seq_of",
    "transition",
]
