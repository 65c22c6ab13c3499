"""EstimateCampaign's model (services/jobs/estimate.py): priors without history, rates
learned from earlier campaigns, ordered ranges, the cache, the budget; and the submit's
max_estimated_cost (services/jobs/estimator.py)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from google.rpc import error_details_pb2
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from prospect.v1 import jobs_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, Reason
from services.common.settings import Settings
from services.jobs.estimate import estimate, prior_pass
from services.jobs.estimate_prices import current_providers, price_model
from services.jobs.estimator import check_limit, validate_max_estimated_cost
from services.jobs.models import Base, JobRow, LeadRow
from services.jobs.outcomes import History, Outcome, Outcomes, outcome_of, query_key
from services.jobs.statuses import rich_status

NOW = datetime(2026, 12, 1, tzinfo=UTC)
REAL = {"places": "google_places", "email_finder": "hunter", "email_verifier": "neverbounce"}
SETTINGS = Settings(google_places_api_key="g", hunter_api_key="h", neverbounce_api_key="n")


def config(**kw: object) -> jobs_pb2.CampaignConfig:
    fields: dict[str, object] = {
        "business_type": "bakery", "location": "Springfield", "max_results": 10,
        "min_confidence_score": 50, "verify_emails": True, **kw,
    }  # fmt: skip
    return jobs_pb2.CampaignConfig(**fields)  # type: ignore[arg-type]


def run(
    c: jobs_pb2.CampaignConfig, history: History, cache_days: float = 30.0
) -> jobs_pb2.CampaignEstimate:
    prices = price_model(SETTINGS, current_providers(SETTINGS, history), c.verify_emails)
    return estimate(c, history, prices, cache_days=cache_days, now=NOW)


def past(n: int, rng: random.Random, *, user: str = "me", max_results: int = 10) -> Outcome:
    """One finished campaign of a world where 25 places answer, 90% qualify and 60% of
    leads get an email (a Hunter search then a verification each)."""
    asked = min(60, max(20, 2 * max_results))
    found = min(asked, 25)
    kept = min(max_results, sum(rng.random() < 0.9 for _ in range(found)))
    emails = sum(rng.random() < 0.6 for _ in range(kept))
    pages = -(-found // 20)
    metrics = {
        "businesses_found": found, "qualified_leads": kept, "leads_enriched": kept,
        "emails_found": emails, "emails_verified": round(emails * 0.8),
        "cost_by_provider": {"google_places": 35_000 * pages, "hunter": 24_500 * emails,
                             "neverbounce": 8_000 * emails},
        "providers": REAL,
    }  # fmt: skip
    stored = {"business_type": "bakery", "location": f"Town {n}", "max_results": max_results,
              "min_confidence_score": 50, "verify_emails": True}  # fmt: skip
    return outcome_of(user, NOW - timedelta(hours=n + 1), stored, metrics)


def actual_cost(o: Outcome) -> int:
    return o.total_cost_micros


def ordered(e: jobs_pb2.CampaignEstimate) -> bool:
    ranges = [e.total, *e.by_provider.values()]
    return all(r.p10_micros <= r.p50_micros <= r.p90_micros for r in ranges)


def test_without_history_the_priors_answer_and_the_basis_says_so() -> None:
    e = run(config(), History())
    assert "no earlier campaigns" in e.basis and "price table" in e.basis
    assert e.expected_places == 20  # 2 x max_results asked; the prior search has 20-60
    assert 8 <= e.expected_qualified_leads <= 10
    assert 0 < e.expected_verified_emails < e.expected_qualified_leads
    assert set(e.by_provider) == {"google_places", "hunter", "neverbounce"}
    assert e.by_provider["google_places"].p50_micros == 35_000  # one page
    assert ordered(e)
    assert 0 < e.total.p10_micros < e.total.p90_micros


def test_with_history_the_range_holds_typical_campaigns() -> None:
    rng = random.Random(7)
    history = History(mine=[past(n, rng) for n in range(12)],
                      others=[past(100 + n, rng, user="other") for n in range(20)])  # fmt: skip
    e = run(config(), history)
    assert "32 earlier campaigns (12 of yours, 20 of this deployment's others)" in e.basis
    fresh = [actual_cost(past(200 + n, rng)) for n in range(200)]
    inside = sum(e.total.p10_micros <= c <= e.total.p90_micros for c in fresh) / len(fresh)
    assert inside >= 0.7
    middle = sorted(fresh)[len(fresh) // 2]
    assert abs(e.total.p50_micros - middle) / middle < 0.1
    assert ordered(e)
    assert e.expected_places == 20 and 9 <= e.expected_qualified_leads <= 10


@pytest.mark.parametrize("max_results", [1, 5, 20, 60, 100])
@pytest.mark.parametrize("verify", [True, False])
def test_every_range_is_ordered_and_exact(max_results: int, verify: bool) -> None:
    rng = random.Random(max_results)
    history = History(mine=[past(n, rng) for n in range(3)])
    e = run(config(max_results=max_results, verify_emails=verify), history)
    assert ordered(e)
    for r in [e.total, *e.by_provider.values()]:
        assert all(isinstance(v, int) and v >= 0 for v in (r.p10_micros, r.p90_micros))
    if not verify:
        assert e.by_provider["neverbounce"].p90_micros == 0
        assert e.expected_verified_emails == 0


def test_the_same_search_recently_run_is_answered_by_the_cache() -> None:
    rng = random.Random(3)
    earlier = past(0, rng)
    again = config(location="Town 0")
    assert query_key(again.business_type, again.location) == earlier.query
    cached = run(again, History(mine=[earlier]))
    fresh = run(config(location="Elsewhere"), History(mine=[earlier]))
    assert "the cache" in cached.basis and "same search" in cached.basis
    assert cached.by_provider["hunter"].p90_micros == 0  # every lead's domain paid for
    assert cached.total.p50_micros < fresh.total.p50_micros
    # With the cache off (ENRICHMENT_CACHE_DAYS=0), the same search pays again.
    assert run(again, History(mine=[earlier]), cache_days=0).by_provider["hunter"].p90_micros


def test_a_share_of_leads_answered_by_the_cache_lowers_the_cost() -> None:
    rng = random.Random(5)
    plain = [past(n, rng) for n in range(10)]
    cached = [replace(o, leads_from_cache=o.leads_enriched // 2) for o in plain]
    without = run(config(), History(mine=plain))
    with_cache = run(config(), History(mine=cached))
    assert with_cache.total.p50_micros < without.total.p50_micros
    assert "leads answered from it" in with_cache.basis


def test_leads_without_a_website_rank_last_and_cost_nothing() -> None:
    """30 places found, 24 with a website: keeping 25 of them keeps at least one without,
    so the email steps are paid for 24 leads, not 25, and keeping 10 pays for all 10."""
    world: list[Outcome] = []
    for n, kept in enumerate((10, 15, 25, 28, 12, 26)):
        sites = min(kept, 24)
        metrics = {
            "businesses_found": 30, "qualified_leads": kept, "leads_enriched": kept,
            "cost_by_provider": {"google_places": 70_000, "hunter": 10_000 * sites,
                                 "neverbounce": 20_000 * sites},
            "providers": REAL,
        }  # fmt: skip
        stored = {"business_type": "bakery", "location": f"Town {n}", "max_results": kept,
                  "min_confidence_score": 50, "verify_emails": True}  # fmt: skip
        o = outcome_of("me", NOW - timedelta(hours=n + 1), stored, metrics)
        world.append(replace(o, leads_without_website=kept - sites))
    history = History(mine=world)
    few = run(config(max_results=10), history).by_provider["neverbounce"].p50_micros
    most = run(config(max_results=28), history).by_provider["neverbounce"].p50_micros
    assert few / 10 == pytest.approx(20_000, rel=0.15)
    assert most / 28 < 0.95 * few / 10  # fewer of the 28 leads have a website


def test_the_budget_caps_the_range() -> None:
    e = run(config(max_results=50, budget_limit_micros=300_000), History())
    assert e.total.p90_micros <= 300_000 and ordered(e)
    assert "budget" in e.basis


def test_sandbox_campaigns_do_not_inform_real_providers() -> None:
    rng = random.Random(1)
    sandbox = {k: "sandbox" for k in REAL}
    sandboxed = [replace(past(n, rng), providers=sandbox) for n in range(5)]
    e = run(config(), History(mine=sandboxed))
    assert "no earlier campaigns" in e.basis


def test_the_estimate_is_the_same_for_the_same_inputs() -> None:
    rng = random.Random(9)
    history = History(mine=[past(n, rng) for n in range(5)])
    assert run(config(), history) == run(config(), history)


def test_prior_pass_falls_with_the_minimum_score() -> None:
    scores = [prior_pass(s) for s in range(0, 101, 5)]
    assert scores == sorted(scores, reverse=True) and scores[0] == 1.0


def test_max_estimated_cost_in_either_form_or_both_equal() -> None:
    request = jobs_pb2.SubmitCampaignRequest
    assert validate_max_estimated_cost(request(max_estimated_cost=1.5)) == 1_500_000
    assert validate_max_estimated_cost(request(max_estimated_cost_micros=7)) == 7
    both = request(max_estimated_cost=1.5, max_estimated_cost_micros=1_500_000)
    assert validate_max_estimated_cost(both) == 1_500_000
    assert validate_max_estimated_cost(request()) == 0
    with pytest.raises(InvalidArgument) as err:
        validate_max_estimated_cost(request(max_estimated_cost=1.5, max_estimated_cost_micros=1))
    assert err.value.field == "max_estimated_cost_micros"
    with pytest.raises(InvalidArgument) as err:
        validate_max_estimated_cost(request(max_estimated_cost=-1))
    assert err.value.field == "max_estimated_cost"


def test_a_p90_over_the_limit_is_refused_with_the_estimate_in_the_details() -> None:
    e = run(config(), History())
    check_limit(e, e.total.p90_micros)  # at the limit: accepted
    with pytest.raises(FailedPrecondition) as err:
        check_limit(e, e.total.p90_micros - 1)
    assert err.value.reason == Reason.ESTIMATE_OVER_LIMIT
    assert err.value.metadata["p90_micros"] == str(e.total.p90_micros)
    status = rich_status(err.value)
    info, detail = error_details_pb2.ErrorInfo(), jobs_pb2.CampaignEstimate()
    assert status.details[0].Unpack(info) and info.reason == "ESTIMATE_OVER_LIMIT"
    assert any(d.Unpack(detail) for d in status.details) and detail == e


async def test_the_history_counts_each_campaigns_leads_without_a_website() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    metrics = {"businesses_found": 20, "qualified_leads": 3, "leads_enriched": 3,
               "providers": REAL}  # fmt: skip
    async with sessions() as session, session.begin():
        session.add(JobRow(id="j1", campaign_id="c1", user_id="me", status="COMPLETED",
                           stage="done", config={"max_results": 3}, metrics=metrics,
                           created_at=NOW))  # fmt: skip
        for rank, site in enumerate(("https://a.example", "https://b.example", "")):
            session.add(LeadRow(id=f"l{rank}", campaign_id="c1", job_id="j1",
                                place_id=f"p{rank}", rank=rank, business_name="x",
                                website=site, confidence_score=50))  # fmt: skip
    history = await Outcomes(sessions).history("me")
    await engine.dispose()
    assert [(o.leads_without_website, o.leads_with_website) for o in history.mine] == [(1, 2)]
