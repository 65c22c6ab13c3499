"""A job's history as the machine derives it (services/jobs/machine/_history.py), and the
first change of a retry job (RetryStarted)."""

from __future__ import annotations

from dataclasses import replace

from services.jobs import machine as m
from tests.unit.test_machine import discovered, enriched, lead

K = m.HistoryKind


def timeline(state: m.JobState, *events: m.Event) -> tuple[m.JobState, list[m.HistoryEntry]]:
    entries: list[m.HistoryEntry] = []
    for event in events:
        result = m.transition(state, event)
        entries += m.history_of(state, event, result)
        if result.state is not None:
            state = result.state
    return state, entries


def kinds(entries: list[m.HistoryEntry]) -> list[tuple[K, m.Stage]]:
    return [(e.kind, e.stage) for e in entries]


def test_a_completed_job_has_each_stage_once_then_finished() -> None:
    state, entries = timeline(m.JobState(), *discovered([90, 80]), enriched(n=0), enriched(n=1))
    assert state.status == m.Status.COMPLETED
    assert kinds(entries) == [
        (K.STAGE, m.Stage.DISCOVERING),
        (K.STAGE, m.Stage.SCORING),
        (K.STAGE, m.Stage.ENRICHING),
        (K.STAGE, m.Stage.STORING),
        (K.FINISHED, m.Stage.DONE),
    ]
    assert entries[-1].message.startswith("Completed: 2 leads")
    assert entries[1].message == "Scoring 12 businesses"
    versions = [e.version for e in entries]
    assert versions == sorted(versions)


def test_progress_and_each_lead_enriched_add_nothing() -> None:
    state, _ = timeline(m.JobState(), *discovered([90, 80, 70]))
    result = m.transition(state, enriched(n=0))
    assert result.state is not None
    assert m.history_of(state, enriched(n=0), result) == []
    progressed = m.DiscoveryProgressed(20, 5, "Details")
    start = replace(m.JobState(), status=m.Status.PROCESSING, stage=m.Stage.DISCOVERING)
    assert m.history_of(start, progressed, m.transition(start, progressed)) == []


def test_retries_name_their_cause() -> None:
    _, entries = timeline(
        m.JobState(),
        m.DiscoveryProgressed(0, 0, "Searching"),
        m.Stalled(31),
        m.DiscoveryFailed("google_places", "timed out", permanent=False),
    )
    assert kinds(entries)[1:] == [
        (K.RETRY, m.Stage.DISCOVERING),
        (K.RETRY, m.Stage.DISCOVERING),
    ]
    assert "No progress for 31s" in entries[1].message
    assert "timed out" in entries[2].message


def test_a_provider_failure_then_the_failed_ending() -> None:
    state, _ = timeline(m.JobState(), *discovered([90, 80]))
    failed = m.LeadFailed(lead(0), "hunter", "401 invalid key", permanent=True)
    state, entries = timeline(state, failed, m.LeadStopped(lead(1)))
    assert state.status == m.Status.FAILED
    assert [e.kind for e in entries] == [K.PROVIDER_ERROR, K.FINISHED]
    assert "hunter" in entries[0].message
    assert entries[1].message.startswith("Failed: ENRICHING failed: hunter: 401 invalid key")


def test_cancel_requested_then_cancelled() -> None:
    state, _ = timeline(m.JobState(), *discovered([90, 80]))
    state, entries = timeline(state, m.CancelRequested(), enriched(n=0), enriched(n=1))
    assert state.status == m.Status.CANCELLED
    assert [e.kind for e in entries] == [K.CANCEL_REQUESTED, K.FINISHED]
    assert entries[0].message.startswith("Cancelling")


def test_a_budget_stop_is_recorded_once() -> None:
    start = replace(m.JobState(), budget_micros=150_000)
    state, _ = timeline(start, *discovered([90, 80, 70], spent=100_000))
    state, more = timeline(state, enriched(micros=42_000, n=0, price=42_000))
    assert state.status == m.Status.COMPLETED
    assert [e.kind for e in more] == [K.BUDGET_STOP, K.STAGE, K.FINISHED]
    assert "2 lead(s) not enriched" in more[0].message


def test_seq_orders_by_version_then_within_the_change() -> None:
    e = [
        m.HistoryEntry(K.CANCEL_REQUESTED, m.Stage.ENRICHING, "", 7),
        m.HistoryEntry(K.FINISHED, m.Stage.ENRICHING, "", 7),
        m.HistoryEntry(K.RETRIED_BY, m.Stage.ENRICHING, "", 7),
    ]
    seqs = m.seq_of(e)
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert m.seq_of(e[2:]) == [seqs[2]]  # written alone, later: still the last place
    assert max(m.seq_of(e[:2])) < m.seq_of([m.HistoryEntry(K.STAGE, m.Stage.DONE, "", 8)])[0]


def test_a_retry_starts_enriching_what_the_first_job_did_not() -> None:
    event = m.RetryStarted("job_x", 12, qualified=3, done=1, emails_found=1,
                           emails_verified=1, avg_confidence=80.0)  # fmt: skip
    result = m.transition(m.JobState(), event)
    assert result.state is not None
    state = result.state
    assert (state.status, state.stage) == (m.Status.PROCESSING, m.Stage.ENRICHING)
    assert state.metrics.total_cost_micros == 0
    assert state.metrics.leads_in_flight == 2 and state.metrics.leads_unqueued == 0
    assert [e for e in result.effects if isinstance(e, m.DispatchLeads)] == [m.DispatchLeads(2)]
    entries = m.history_of(m.JobState(), event, result)
    assert kinds(entries) == [(K.STAGE, m.Stage.ENRICHING)]
    state, _ = timeline(state, enriched(n=1), enriched(n=2, micros=10_000))
    assert state.status == m.Status.COMPLETED
    assert state.metrics.leads_enriched == 3 and state.metrics.leads_from_cache == 1
    assert state.metrics.total_cost_micros == 42_000 + 10_000


def test_a_retry_with_every_lead_done_completes_at_once() -> None:
    event = m.RetryStarted("job_x", 5, qualified=2, done=2, emails_found=2,
                           emails_verified=0, avg_confidence=70.0)  # fmt: skip
    result = m.transition(m.JobState(), event)
    assert result.state is not None and result.state.status == m.Status.COMPLETED
    assert [e.kind for e in m.history_of(m.JobState(), event, result)] == [
        K.STAGE,
        K.STAGE,
        K.FINISHED,
    ]
