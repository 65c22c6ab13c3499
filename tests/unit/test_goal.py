"""Stop on goal (CampaignConfig.target_verified_emails): the machine's rules, the history
entry and the config's validation, without NATS or a database."""

from __future__ import annotations

import pytest

from prospect.v1 import jobs_pb2
from services.cli import main, render
from services.common.errors import InvalidArgument
from services.jobs import machine as m
from services.jobs.validation import validate_config
from tests.unit.test_history import timeline
from tests.unit.test_machine import discovered, enriched, run

NOT_FOUND, CATCHALL = m.EmailStatus.NOT_FOUND, m.EmailStatus.CATCHALL
SKIPPED_GOAL = m.CloseLeads((m.LeadState.PENDING,), m.LeadState.SKIPPED, m.EmailStatus.SKIPPED_GOAL)


def dispatched(effects: list[m.Effect]) -> int:
    return sum(e.count for e in effects if isinstance(e, m.DispatchLeads))


def test_without_a_goal_every_lead_is_queued_at_once() -> None:
    _, _, effects = run(m.JobState(), *discovered([90, 80, 70, 60, 50]))
    assert m.DispatchLeads(5, 0, 1) in effects


def test_never_more_in_flight_than_verified_emails_still_missing() -> None:
    state, _, effects = run(m.JobState(target_verified=2), *discovered([90, 80, 70, 60, 50]))
    assert m.DispatchLeads(2, 0, 1) in effects  # leads 0 and 1, in rank order
    assert state.metrics.leads_in_flight == 2
    # Lead 0 found nothing: one more may go, the goal still misses 2 with 1 in flight.
    state, _, effects = run(state, enriched(n=0, status=NOT_FOUND))
    assert dispatched(effects) == 1 and state.metrics.leads_in_flight == 2
    # Lead 1 verified: 1 missing, 1 in flight (lead 2): nothing more.
    state, _, effects = run(state, enriched(n=1))
    assert dispatched(effects) == 0 and state.metrics.leads_in_flight == 1
    # A catch-all is not verified: lead 3 goes.
    state, _, effects = run(state, enriched(n=2, status=CATCHALL))
    assert dispatched(effects) == 1
    assert state.status == m.Status.PROCESSING and not state.goal_reached


def test_reaching_the_goal_skips_the_rest_and_completes() -> None:
    state, _, _ = run(m.JobState(target_verified=2), *discovered([90, 80, 70, 60, 50]))
    state, snaps, effects = run(state, enriched(n=0), enriched(n=1))
    assert state.goal_reached
    assert dispatched(effects) == 0  # nothing queued after the goal
    assert SKIPPED_GOAL in effects
    assert state.status == m.Status.COMPLETED and state.progress == 100
    assert state.metrics.leads_skipped_goal == 3
    assert state.metrics.leads_skipped_budget == 0 and state.metrics.leads_never_queued == 0
    assert state.metrics.leads_in_flight == 0 and state.metrics.leads_unqueued == 0
    assert state.metrics.leads_settled == state.metrics.qualified_leads
    assert snaps[-1].message.startswith("Completed: goal of 2 verified emails reached; 5 leads")
    assert "3 skipped for goal" in snaps[-1].message
    [final] = [e for e in effects if isinstance(e, m.FinalizeCampaign)]
    assert final.status == m.Status.COMPLETED and final.total_cost_micros == 100_000 + 84_000


def test_a_goal_larger_than_what_is_found_enriches_every_lead() -> None:
    state, _, _ = run(m.JobState(target_verified=5), *discovered([90, 80, 70]))
    state, snaps, effects = run(
        state, enriched(n=0), enriched(n=1, status=NOT_FOUND), enriched(n=2)
    )
    assert state.status == m.Status.COMPLETED and not state.goal_reached
    assert state.metrics.leads_enriched == 3 and state.metrics.leads_skipped_goal == 0
    assert not any(isinstance(e, m.CloseLeads) for e in effects)
    assert "goal" not in snaps[-1].message


def test_a_report_after_the_goal_only_books_its_money() -> None:
    state, _, _ = run(m.JobState(target_verified=1), *discovered([90, 80]), enriched(n=0))
    assert state.status == m.Status.COMPLETED
    late = m.transition(state, enriched(7_000, n=0, state=m.LeadState.ENRICHED))
    assert late.state is None and "COMPLETED" in late.refused


def test_goal_and_budget_both_limit_the_queue() -> None:
    start = m.JobState(budget_micros=1_000_000, target_verified=3)
    state, _, effects = run(start, *discovered([90, 80, 70, 60, 50, 40], spent=100_000))
    assert m.DispatchLeads(1, 900_000, 1) in effects  # price unknown: one at a time
    state, _, effects = run(state, enriched(40_000, n=0, price=40_000))
    # Budget allows many, the goal misses 2 with none in flight.
    assert m.DispatchLeads(2, 40_000, 1) in effects
    state, _, effects = run(state, enriched(40_000, n=1, price=40_000))
    assert dispatched(effects) == 0  # 1 missing, lead 2 in flight
    state, _, effects = run(state, enriched(40_000, n=2, price=40_000))
    assert state.goal_reached and dispatched(effects) == 0
    assert SKIPPED_GOAL in effects and state.status == m.Status.COMPLETED
    assert state.metrics.leads_skipped_goal == 3 and state.metrics.leads_skipped_budget == 0


def test_a_retry_that_starts_at_the_goal_skips_every_pending_lead() -> None:
    retry = m.RetryStarted(
        retry_of="job_1",
        businesses_found=5,
        qualified=4,
        avg_confidence=80.0,
        done=2,
        emails_found=2,
        emails_verified=2,
    )
    state, _, effects = run(m.JobState(target_verified=2), retry)
    assert dispatched(effects) == 0 and SKIPPED_GOAL in effects
    assert state.status == m.Status.COMPLETED and state.metrics.leads_skipped_goal == 2


def test_a_cancel_under_a_goal_stops_as_usual() -> None:
    state, _, _ = run(m.JobState(target_verified=2), *discovered([90, 80, 70]))
    state, _, _ = run(state, m.CancelRequested(), enriched(n=0), enriched(n=1))
    assert state.status == m.Status.CANCELLED and state.metrics.leads_skipped_goal == 0
    assert state.metrics.leads_stopped == 1


def test_the_goal_is_recorded_once_in_the_history() -> None:
    K = m.HistoryKind
    state, _ = timeline(m.JobState(target_verified=1), *discovered([90, 80, 70]))
    state, entries = timeline(state, enriched(n=0, status=NOT_FOUND), enriched(n=1))
    assert [e.kind for e in entries] == [K.GOAL_REACHED, K.STAGE, K.FINISHED]
    assert entries[0].stage == m.Stage.ENRICHING
    assert entries[0].message.startswith("Goal of 1 verified emails reached: 1 lead(s) not")
    assert entries[0].version < entries[1].version


def test_history_has_no_goal_entry_without_a_goal() -> None:
    _, entries = timeline(m.JobState(), *discovered([90]), enriched(n=0))
    assert m.HistoryKind.GOAL_REACHED not in [e.kind for e in entries]


def config(**changes: object) -> jobs_pb2.CampaignConfig:
    fields: dict[str, object] = {
        "business_type": "cafe",
        "location": "Seattle, WA",
        "max_results": 10,
        "verify_emails": True,
    }
    return jobs_pb2.CampaignConfig(**{**fields, **changes})  # type: ignore[arg-type]


def test_validation_keeps_the_goal() -> None:
    assert validate_config(config(target_verified_emails=10)).target_verified_emails == 10
    assert validate_config(config()).target_verified_emails == 0
    assert validate_config(config(verify_emails=False)).target_verified_emails == 0


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"target_verified_emails": -1}, "must not be negative"),
        ({"target_verified_emails": 11}, "at most config.max_results"),
        ({"target_verified_emails": 2, "verify_emails": False}, "needs config.verify_emails"),
    ],
)
def test_validation_refuses_a_bad_goal(changes: dict[str, object], rule: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_config(config(**changes))
    assert caught.value.field == "config.target_verified_emails"
    assert rule in caught.value.rule


def test_the_cli_submits_the_goal_and_shows_it() -> None:
    args = main.parse_args(["submit", "cafe", "Seattle, WA", "--target-verified-emails", "3"])
    assert args.target_verified_emails == 3
    assert main.parse_args(["submit", "cafe", "Seattle, WA"]).target_verified_emails == 0
    job = jobs_pb2.Job(
        id="job_1",
        config=config(target_verified_emails=3),
        metrics=jobs_pb2.JobMetrics(leads_skipped_goal=7),
    )
    summary = render.job_summary(job)
    assert "3 verified emails" in summary and "7 leads skipped" in summary
