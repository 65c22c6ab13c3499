"""The job and lead state machine, without NATS or a database."""

from __future__ import annotations

from dataclasses import replace

from prospect.v1 import work_pb2
from services.jobs import machine as m

DISPATCHED = m.LeadState.DISPATCHED


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


def cost(micros: int, provider: str = "sandbox") -> m.Cost:
    return m.Cost({provider: micros} if micros else {})


def places(scores: list[int]) -> tuple[work_pb2.Place, ...]:
    return tuple(
        work_pb2.Place(place_id=f"p{i}", name=f"Cafe {i}", confidence_score=s)
        for i, s in enumerate(scores)
    )


def discovered(scores: list[int], spent: int = 100_000) -> list[m.Event]:
    return [
        m.DiscoveryProgressed(0, 0, "Searching"),
        m.DiscoveryProgressed(10, 12, "Found 12", cost(32_000)),
        m.DiscoveryProgressed(30, 12, "Details", cost(spent - 32_000)),
        m.DiscoveryFinished(12, places(scores), providers={"places": "sandbox"}),
    ]


def lead(n: int = 0, state: m.LeadState = DISPATCHED) -> m.LeadRef:
    return m.LeadRef(f"lead_{n}", state)


def enriched(
    micros: int = 42_000,
    status: m.EmailStatus = m.EmailStatus.VALID,
    n: int = 0,
    state: m.LeadState = DISPATCHED,
    price: int = 0,
) -> m.LeadEnriched:
    email = "" if status in (m.EmailStatus.NOT_FOUND, m.EmailStatus.SKIPPED_BUDGET) else "a@b.c"
    return m.LeadEnriched(lead(n, state), email, status, lead_price_micros=price, cost=cost(micros))


def outcomes(effects: list[m.Effect]) -> list[m.SetLeadOutcome]:
    return [e for e in effects if isinstance(e, m.SetLeadOutcome)]


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
    [store] = [e for e in effects if isinstance(e, m.StoreLeads)]
    assert [p.place_id for p in store.places] == ["p0", "p1", "p2"]
    assert store.shares == (33_334, 33_333, 33_333) and store.provider == "sandbox"
    assert m.DispatchLeads(3, 0, 1) in effects  # no budget: every lead at once

    state, snaps, effects = run(
        state, enriched(n=0), enriched(status=m.EmailStatus.NOT_FOUND, n=1), enriched(n=2)
    )
    assert [s.state.progress for s in snaps if s.state.stage == m.Stage.ENRICHING] == [63, 76, 90]
    assert snaps[-1].state.status == m.Status.COMPLETED
    assert snaps[-1].state.stage == m.Stage.DONE and snaps[-1].state.progress == 100
    assert snaps[-2].state.stage == m.Stage.STORING
    assert m.FinalizeCampaign(m.Status.COMPLETED, 3, 226_000, 80.0) in effects
    assert state.metrics.emails_found == 2 and state.metrics.emails_verified == 2
    assert state.metrics.total_cost_micros == 100_000 + 3 * 42_000
    assert "Enriching 1/3 contacts, $0.14 so far" in [s.message for s in snaps]
    assert [o.state for o in outcomes(effects)] == [m.LeadState.ENRICHED] * 3
    assert m.AddLeadCost("lead_0", {"sandbox": 42_000}) in effects


def test_versions_strictly_increase_and_progress_never_goes_back() -> None:
    events = [*discovered([90, 80]), enriched(n=0), enriched(n=1)]
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
    state, _, effects = run(start, *discovered([90, 80, 70, 60, 50], spent=100_000))
    # The price of a lead is not known yet: one lead, allowed all that is left.
    assert m.DispatchLeads(1, 100_000, 1) in effects
    state, _, effects = run(state, enriched(20_000, price=40_000))
    # 120k spent, 80k left, 40k reserved per queued lead: two more leads fit.
    assert m.DispatchLeads(2, 40_000, 1) in effects
    state, _, effects = run(state, enriched(40_000, n=1, price=40_000))
    assert not any(isinstance(e, m.DispatchLeads) for e in effects)  # 40k left, 40k reserved
    state, _, effects = run(state, enriched(0, m.EmailStatus.SKIPPED_BUDGET, n=2, price=40_000))
    assert m.DispatchLeads(1, 40_000, 1) in effects  # the skipped lead's reservation is free
    assert outcomes(effects)[0].state == m.LeadState.SKIPPED
    state, snaps, effects = run(state, enriched(40_000, n=3, price=40_000))
    assert (
        m.CloseLeads((m.LeadState.PENDING,), m.LeadState.SKIPPED, m.EmailStatus.SKIPPED_BUDGET)
        in effects
    )
    assert state.status == m.Status.COMPLETED
    assert state.metrics.total_cost_micros == 200_000  # never above the budget
    assert state.metrics.leads_skipped_budget == 2  # one unaffordable, one never queued
    assert state.metrics.leads_enriched == 3
    assert "2 skipped for budget" in snaps[-1].message


def test_costs_are_kept_per_provider() -> None:
    state, _, _ = run(
        m.JobState(),
        m.DiscoveryProgressed(10, 3, "Found", cost(35_000, "google_places")),
        m.DiscoveryFinished(3, places([90])),
        m.LeadEnriched(
            lead(),
            "a@b.c",
            m.EmailStatus.VALID,
            cost=m.Cost({"hunter": 24_500, "neverbounce": 8_000}),
        ),
    )
    assert state.metrics.cost_by_provider == {
        "google_places": 35_000,
        "hunter": 24_500,
        "neverbounce": 8_000,
    }
    assert sum(state.metrics.cost_by_provider.values()) == state.metrics.total_cost_micros


def test_cached_leads_are_counted() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    cached = m.LeadEnriched(lead(0), "a@b.c", m.EmailStatus.VALID, from_cache=True)
    state, _, _ = run(state, cached, enriched(n=1))
    assert state.metrics.leads_from_cache == 1 and state.status == m.Status.COMPLETED


def test_redelivered_lead_bills_again_but_counts_once() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    state, _, _ = run(state, enriched(42_000))
    state, _snaps, effects = run(state, enriched(42_000, state=m.LeadState.ENRICHED))
    assert not outcomes(effects)  # the settled lead is left as it is
    assert effects == [m.AddLeadCost("lead_0", {"sandbox": 42_000})]
    assert state.metrics.leads_enriched == 1
    assert state.metrics.total_cost_micros == 100_000 + 84_000
    assert state.status == m.Status.PROCESSING


def test_a_final_job_refuses_every_event() -> None:
    state, _, _ = run(m.JobState(), *discovered([90]), enriched())
    assert state.status == m.Status.COMPLETED
    for event in (enriched(5_000), m.CancelRequested(), m.Stalled(900), m.StopTimedOut(90)):
        result = m.transition(state, event)
        assert result.state is None and not result.effects and not result.snapshots
        assert "COMPLETED" in result.refused


def test_cancel_waits_for_the_work_under_way_then_is_final() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80, 70]))
    state, _, _ = run(state, enriched(n=0))
    state, snaps, effects = run(state, m.CancelRequested())
    assert state.status == m.Status.CANCELLING and not state.status.terminal
    assert effects[0] == m.StopWork()
    assert "waiting for 2 task(s)" in snaps[-1].message
    # A call that was in flight reports its result: counted, the lead keeps its email.
    state, _, effects = run(state, enriched(30_000, n=1))
    assert state.status == m.Status.CANCELLING and state.metrics.leads_enriched == 2
    assert outcomes(effects)[0].email == "a@b.c"
    # The last task stops: the job is final, with every cent of both.
    state, snaps, effects = run(state, m.LeadStopped(lead(2), cost(24_500)))
    assert state.status == m.Status.CANCELLED
    assert outcomes(effects)[0] == m.SetLeadOutcome(
        "lead_2", m.LeadState.STOPPED, m.EmailStatus.SKIPPED_CANCELLED
    )
    assert state.metrics.total_cost_micros == 100_000 + 42_000 + 30_000 + 24_500
    [final] = [e for e in effects if isinstance(e, m.FinalizeCampaign)]
    assert final.status == m.Status.CANCELLED
    assert final.total_cost_micros == state.metrics.total_cost_micros
    assert snaps[-1].message.startswith("Cancelled")


def test_cancel_closes_the_leads_never_queued() -> None:
    start = m.JobState(budget_micros=1_000_000)
    state, _, effects = run(start, *discovered([90, 80, 70]))
    assert m.DispatchLeads(1, 900_000, 1) in effects  # one at a time until a price is known
    state, _, effects = run(state, m.CancelRequested())
    assert (
        m.CloseLeads((m.LeadState.PENDING,), m.LeadState.STOPPED, m.EmailStatus.SKIPPED_CANCELLED)
        in effects
    )
    assert state.status == m.Status.CANCELLING and state.metrics.leads_stopped == 2
    state, _, _ = run(state, enriched(n=0))
    assert state.status == m.Status.CANCELLED
    assert state.metrics.leads_settled == state.metrics.qualified_leads == 3


def test_cancel_with_nothing_under_way_is_final_at_once() -> None:
    state, _, _ = run(m.JobState(), *discovered([90]))
    state = replace(state, metrics=replace(state.metrics, leads_stopped=1))  # settled
    state, snaps, _ = run(state, m.CancelRequested())
    assert state.status == m.Status.CANCELLED and len(snaps) == 1


def test_cancel_during_discovery_waits_for_the_discovery_task() -> None:
    state, _, _ = run(m.JobState(), m.DiscoveryProgressed(0, 0, "Searching"))
    state, _, _ = run(state, m.CancelRequested())
    assert state.status == m.Status.CANCELLING
    again = m.transition(state, m.CancelRequested())
    assert again.state is None  # already cancelling: nothing new
    state, _, _ = run(state, m.DiscoveryStopped(cost(35_000)))
    assert state.status == m.Status.CANCELLED
    assert state.metrics.total_cost_micros == 35_000


def test_a_result_arriving_while_cancelling_is_kept_but_not_enriched() -> None:
    state, _, _ = run(m.JobState(), m.DiscoveryProgressed(0, 0, "Searching"), m.CancelRequested())
    state, _, effects = run(state, m.DiscoveryFinished(5, places([90, 80]), cost(55_000)))
    [store] = [e for e in effects if isinstance(e, m.StoreLeads)]
    assert store.state == m.LeadState.STOPPED
    assert store.email_status == m.EmailStatus.SKIPPED_CANCELLED
    assert not any(isinstance(e, m.DispatchLeads) for e in effects)
    assert state.status == m.Status.CANCELLED and state.metrics.qualified_leads == 2


def test_a_stopping_job_ends_at_the_deadline_with_what_it_has() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]), m.CancelRequested())
    state, snaps, effects = run(state, m.StopTimedOut(61))
    assert state.status == m.Status.CANCELLED
    assert (
        m.CloseLeads(
            (m.LeadState.PENDING, DISPATCHED), m.LeadState.STOPPED, m.EmailStatus.SKIPPED_CANCELLED
        )
        in effects
    )
    assert "2 task(s) did not report within 61s" in snaps[-1].message
    late = m.transition(state, enriched(n=0))
    assert late.state is None and late.refused


def test_transient_discovery_failure_retries_until_attempts_run_out() -> None:
    failure = m.DiscoveryFailed("google_places", "429", permanent=False)
    state, _, effects = run(m.JobState(max_attempts=2), failure)
    assert effects == [m.RetryDiscovery(2)] and state.attempts == 2
    state, _snaps, effects = run(state, failure)
    assert state.status == m.Status.FAILED  # the failed task was the one under way
    assert m.StopWork() in effects
    assert "DISCOVERING" in state.error and "google_places" in state.error
    assert "2 attempt" in state.error


def test_permanent_failure_of_a_lead_fails_the_job_after_the_others_report() -> None:
    failure = m.LeadFailed(lead(0), "hunter", "401 bad key", permanent=True)
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    state, _, effects = run(state, failure)
    assert state.status == m.Status.FAILING and "hunter" in state.error
    assert m.StopWork() in effects
    state, _, effects = run(state, m.LeadFailed(lead(1), "hunter", "401 bad key", True, cost(0)))
    assert state.status == m.Status.FAILED and state.metrics.leads_failed == 2


def test_one_lead_failing_after_retries_does_not_fail_the_job() -> None:
    failure = m.LeadFailed(lead(0), "hunter", "timeout", permanent=False)
    state, _, effects = run(m.JobState(), *discovered([90, 80]))
    state, _, effects = run(state, failure, enriched(n=1))
    assert state.status == m.Status.COMPLETED
    assert state.metrics.leads_failed == 1 and state.metrics.leads_enriched == 1
    assert outcomes(effects)[0] == m.SetLeadOutcome(
        "lead_0", m.LeadState.FAILED, m.EmailStatus.ERROR
    )


def test_charges_of_interrupted_deliveries_are_counted() -> None:
    state, _, _ = run(m.JobState(), m.DiscoveryProgressed(0, 0, "Searching"))
    state, _, effects = run(state, m.Charged("interrupted", cost(32_000)))
    assert state.metrics.discovery_cost_micros == 32_000
    assert not effects  # leads not stored yet: shared among them later
    state, _, _ = run(state, m.DiscoveryFinished(3, places([90])))
    state, _, effects = run(state, m.Charged("late discovery", cost(17_000)))
    assert effects == [m.ShareCost({"sandbox": 17_000})]
    assert state.metrics.total_cost_micros == 49_000
    state, _, effects = run(state, m.LeadCharged(lead(0), "retrying", cost(8_000)))
    assert effects == [m.AddLeadCost("lead_0", {"sandbox": 8_000})]
    assert state.metrics.leads_settled == 0


def test_stale_discovery_report_does_not_move_the_job_back() -> None:
    state, _, _ = run(m.JobState(), *discovered([90, 80]))
    before = replace(state)
    result = m.transition(state, m.DiscoveryProgressed(10, 5, "old attempt"))
    assert result.state is None
    assert state == before


def test_metrics_round_trip_json() -> None:
    metrics = m.Metrics(businesses_found=3, total_cost_micros=5, providers={"places": "sandbox"})
    assert m.Metrics.from_json(metrics.to_json()) == metrics
    assert metrics.sandbox


def test_a_stalled_job_is_retried_then_failed() -> None:
    state, _, effects = run(m.JobState(max_attempts=2), m.DiscoveryProgressed(0, 0, "Go"))
    state, snaps, effects = run(state, m.Stalled(700))
    assert effects == [m.RetryDiscovery(2)] and state.attempts == 2
    assert state.status == m.Status.PROCESSING and "No progress for 700s" in snaps[-1].message
    state, _, effects = run(state, m.Stalled(700))
    assert state.status == m.Status.FAILED and "gave up after 2 attempt" in state.error
    assert m.StopWork() in effects


def test_a_job_stalled_in_enrichment_requeues_its_unsettled_leads() -> None:
    state, _, _ = run(m.JobState(budget_micros=500_000), *discovered([90, 80]))
    state, _, _ = run(state, enriched(n=0, price=50_000))
    state, _, effects = run(state, m.Stalled(700))
    assert effects == [m.RedispatchLeads(2, 50_000)]
    state, _, _ = run(state, enriched(n=1))
    assert state.status == m.Status.COMPLETED


def test_leads_queued_again_under_a_budget_never_get_an_unlimited_allowance() -> None:
    state, _, effects = run(m.JobState(budget_micros=300_000), *discovered([90, 80]))
    assert m.DispatchLeads(1, 200_000, 1) in effects  # no price known yet
    _, _, effects = run(state, m.Stalled(700))
    assert effects == [m.RedispatchLeads(2, 200_000)]  # what is left, not 0 (no limit)
    spent = replace(state, metrics=replace(state.metrics, total_cost_micros=300_000))
    _, _, effects = run(spent, m.Stalled(700))
    assert effects == [m.RedispatchLeads(2, 1)]  # nothing left: pays for nothing
