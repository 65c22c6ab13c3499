"""The job state machine, without NATS or a database."""

from __future__ import annotations

from dataclasses import replace

from services.jobs import machine as m


def run(state: m.JobState, *events: m.Event) -> tuple[m.JobState, list[m.Snapshot], list[m.Effect]]:
    snapshots: list[m.Snapshot] = []
    effects: list[m.Effect] = []
    for event in events:
        result = m.transition(state, event)
        if result.state is not None:
            state = result.state
        snapshots += result.snapshots
        effects += result.effects
    return state, snapshots, effects


def discovered(scores: list[int], cost: int = 100_000) -> list[m.Event]:
    return [
        m.DiscoveryProgressed(0, 0, 0, "Searching"),
        m.DiscoveryProgressed(10, 12, 32_000, "Found 12"),
        m.DiscoveryProgressed(30, 12, cost - 32_000, "Details"),
        m.DiscoveryFinished(12, scores, 0, {"places": "sandbox"}),
    ]


def enriched(cost: int = 42_000, email: bool = True, valid: bool = True) -> m.LeadEnriched:
    return m.LeadEnriched(cost, email, valid)


def test_happy_path_follows_the_stage_table() -> None:
    state, snaps, effects = run(m.JobState(), *discovered([90, 80, 70]))
    assert [s.state.stage for s in snaps] == [
        m.Stage.DISCOVERING,
        m.Stage.DISCOVERING,
        m.Stage.DISCOVERING,
        m.Stage.SCORING,
        m.Stage.ENRICHING,
    ]
    assert [s.state.progress for s in snaps] == [0, 10, 30, 30, 50]
    assert state.metrics.qualified_leads == 3
    assert state.metrics.avg_confidence == 80.0
    assert m.StoreLeads() in effects
    assert m.DispatchLeads(3) in effects  # no budget: every lead at once

    state, snaps, effects = run(state, enriched(), enriched(email=False, valid=False), enriched())
    assert [s.state.progress for s in snaps if s.state.stage == m.Stage.ENRICHING] == [63, 76, 90]
    assert snaps[-1].state.status == m.Status.COMPLETED
    assert snaps[-1].state.stage == m.Stage.DONE and snaps[-1].state.progress == 100
    assert snaps[-2].state.stage == m.Stage.STORING
    assert m.FinalizeCampaign() in effects
    assert state.metrics.emails_found == 2 and state.metrics.emails_verified == 2
    assert state.metrics.total_cost_micros == 100_000 + 3 * 42_000
    assert "Enriching 1/3 contacts, $0.14 so far" in [s.message for s in snaps]


def test_versions_strictly_increase_and_progress_never_goes_back() -> None:
    events = [*discovered([90, 80]), enriched(), enriched()]
    _, snaps, _ = run(m.JobState(), *events)
    versions = [s.state.version for s in snaps]
    assert versions == list(range(2, 2 + len(snaps)))
    progress = [s.state.progress for s in snaps]
    assert progress == sorted(progress)


def test_no_qualified_leads_completes_at_once() -> None:
    state, _snaps, effects = run(m.JobState(), *discovered([]))
    assert state.status == m.Status.COMPLETED
    assert not any(isinstance(e, m.DispatchLeads) for e in effects)


def test_budget_paces_dispatch_and_skips_what_it_cannot_afford() -> None:
    start = m.JobState(budget_micros=200_000)
    state, _, effects = run(start, *discovered([90, 80, 70, 60, 50], cost=100_000))
    # The price of a lead is not known yet: one lead, allowed all that is left.
    assert m.DispatchLeads(1, 100_000) in effects
    state, _, effects = run(state, m.LeadEnriched(20_000, True, True, lead_price_micros=40_000))
    # 120k spent, 80k left, 40k reserved per queued lead: two more leads fit.
    assert m.DispatchLeads(2, 40_000) in effects
    state, _, effects = run(state, m.LeadEnriched(40_000, True, True, lead_price_micros=40_000))
    assert not any(isinstance(e, m.DispatchLeads) for e in effects)  # 40k left, 40k reserved
    state, snaps, effects = run(
        state, m.LeadEnriched(0, False, False, skipped_budget=True, lead_price_micros=40_000)
    )
    assert m.DispatchLeads(1, 40_000) in effects  # the skipped lead's reservation is free
    state, snaps, effects = run(
        state, m.LeadEnriched(40_000, True, False, lead_price_micros=40_000)
    )
    assert m.SkipPendingLeads() in effects
    assert state.status == m.Status.COMPLETED
    assert state.metrics.total_cost_micros == 200_000  # never above the budget
    assert state.metrics.leads_skipped_budget == 2  # one unaffordable, one never queued
    assert state.metrics.leads_enriched == 3
    assert "2 skipped for budget" in snaps[-1].message


def test_costs_are_kept_per_provider() -> None:
    state, _, _ = run(
        m.JobState(),
        m.DiscoveryProgressed(10, 3, 35_000, "Found", by_provider={"google_places": 35_000}),
        m.DiscoveryFinished(3, [90], 0),
        m.LeadEnriched(32_500, True, True, by_provider={"hunter": 24_500, "neverbounce": 8_000}),
    )
    assert state.metrics.cost_by_provider == {
        "google_places": 35_000,
        "hunter": 24_500,
        "neverbounce": 8_000,
    }
    assert sum(state.metrics.cost_by_provider.values()) == state.metrics.total_cost_micros


def test_cached_leads_are_counted() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    state, _, _ = run(state, m.LeadEnriched(0, True, True, from_cache=True), enriched())
    assert state.metrics.leads_from_cache == 1 and state.status == m.Status.COMPLETED


def test_redelivered_lead_bills_again_but_counts_once() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    state, _, _ = run(state, enriched(cost=42_000))
    state, _snaps, _ = run(state, m.LeadEnriched(42_000, True, True, first_report=False))
    assert state.metrics.leads_enriched == 1
    assert state.metrics.total_cost_micros == 100_000 + 84_000
    assert state.status == m.Status.PROCESSING


def test_terminal_job_ignores_events_but_keeps_late_charges() -> None:
    state, _, _ = run(m.JobState(), *discovered([90]))
    state, _, _ = run(state, m.CancelRequested())
    assert state.status == m.Status.CANCELLED
    assert m.transition(state, enriched(cost=0)).state is None
    late = m.transition(state, enriched(cost=5_000))
    assert late.state is not None
    assert late.state.status == m.Status.CANCELLED
    assert late.state.metrics.total_cost_micros == state.metrics.total_cost_micros + 5_000
    assert late.state.metrics.leads_enriched == state.metrics.leads_enriched


def test_cancel_announces_to_workers() -> None:
    result = m.transition(m.JobState(), m.CancelRequested())
    assert result.state is not None and result.state.status == m.Status.CANCELLED
    assert result.effects == [m.StopWork()]


def test_transient_discovery_failure_retries_until_attempts_run_out() -> None:
    failure = m.TaskFailed(m.Stage.DISCOVERING, "google_places", "429", permanent=False)
    state, _, effects = run(m.JobState(max_attempts=2), failure)
    assert effects == [m.RetryDiscovery(2)] and state.attempts == 2
    state, _snaps, _ = run(state, failure)
    assert state.status == m.Status.FAILED
    assert "DISCOVERING" in state.error and "google_places" in state.error
    assert "2 attempt" in state.error


def test_permanent_failure_fails_fast() -> None:
    failure = m.TaskFailed(m.Stage.ENRICHING, "hunter", "401 bad key", permanent=True, lead=True)
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    state, _, _ = run(state, failure)
    assert state.status == m.Status.FAILED and "hunter" in state.error


def test_one_lead_failing_after_retries_does_not_fail_the_job() -> None:
    failure = m.TaskFailed(m.Stage.ENRICHING, "hunter", "timeout", permanent=False, lead=True)
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    state, _, _ = run(state, failure, enriched())
    assert state.status == m.Status.COMPLETED
    assert state.metrics.leads_failed == 1 and state.metrics.leads_enriched == 1


def test_charges_of_interrupted_deliveries_are_counted() -> None:
    state, _, _ = run(m.JobState(), m.DiscoveryProgressed(0, 0, 0, "Searching"))
    state, _, effects = run(state, m.Charged(32_000, "interrupted"))
    assert state.metrics.discovery_cost_micros == 32_000
    assert not effects  # leads not stored yet: shared among them later
    state, _, _ = run(state, m.DiscoveryFinished(3, [90], 0))
    state, _, effects = run(state, m.Charged(17_000, "late discovery"))
    assert effects == [m.ShareCost(17_000)]
    assert state.metrics.total_cost_micros == 49_000


def test_stale_discovery_report_does_not_move_the_job_back() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    before = replace(state)
    result = m.transition(state, m.DiscoveryProgressed(10, 5, 0, "old attempt"))
    assert result.state is None
    assert state == before


def test_metrics_round_trip_json() -> None:
    metrics = m.Metrics(businesses_found=3, total_cost_micros=5, providers={"places": "sandbox"})
    assert m.Metrics.from_json(metrics.to_json()) == metrics
    assert metrics.sandbox


def test_a_stalled_job_is_retried_then_failed() -> None:
    state, _, effects = run(m.JobState(max_attempts=2), m.DiscoveryProgressed(0, 0, 0, "Go"))
    state, snaps, effects = run(state, m.Stalled(700))
    assert effects == [m.RetryDiscovery(2)] and state.attempts == 2
    assert state.status == m.Status.PROCESSING and "No progress for 700s" in snaps[-1].message
    state, _, effects = run(state, m.Stalled(700))
    assert state.status == m.Status.FAILED and "gave up after 2 attempt" in state.error
    assert m.StopWork() in effects


def test_a_job_stalled_in_enrichment_requeues_its_unsettled_leads() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]), enriched())
    state, _, effects = run(state, m.Stalled(700))
    assert effects == [m.RedispatchLeads(2)]
    state, _, _ = run(state, enriched())
    assert state.status == m.Status.COMPLETED
