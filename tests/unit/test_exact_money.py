"""Exact money in the API: the budget may be given as a double or as exact micro-dollars
(or both, agreeing); it is stored in one canonical form, and every config, job and lead the
API returns carries each amount in both forms, the micros from the books' integers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from prospect.v1 import jobs_pb2
from services.common.errors import InvalidArgument
from services.jobs import convert
from services.jobs import validation as v
from services.jobs.machine import Metrics
from services.jobs.models import JobRow, LeadRow


def config(**overrides: object) -> jobs_pb2.CampaignConfig:
    values: dict[str, object] = dict(
        business_type="bakery", location="Keyport, ME", max_results=3, min_confidence_score=0
    )
    values.update(overrides)
    return jobs_pb2.CampaignConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "micros", "usd"),
    [
        ({}, 0, 0.0),
        ({"budget_limit": 5.0}, 5_000_000, 5.0),
        ({"budget_limit": 0.1}, 100_000, 0.1),
        ({"budget_limit_micros": 412_345}, 412_345, 0.412345),
        ({"budget_limit_micros": 1}, 1, 0.000001),
        ({"budget_limit_micros": v.BUDGET_MAX_MICROS}, 10_000_000_000, 10_000.0),
        ({"budget_limit": 0.412345, "budget_limit_micros": 412_345}, 412_345, 0.412345),
        ({"budget_limit": 10_000.0, "budget_limit_micros": 10_000_000_000}, 10**10, 10_000.0),
    ],
    ids=repr,
)
def test_either_form_or_both_agreeing_gives_both(
    given: dict[str, object], micros: int, usd: float
) -> None:
    clean = v.validate_config(config(**given))
    assert clean.budget_limit_micros == micros
    assert clean.budget_limit == usd == micros / 1_000_000


@pytest.mark.parametrize(
    "given",
    [
        {"budget_limit": 5.0, "budget_limit_micros": 5_000_001},
        {"budget_limit": 5.000001, "budget_limit_micros": 5_000_000},
        {"budget_limit": 0.41, "budget_limit_micros": 412_345},
        {"budget_limit": 1e-9, "budget_limit_micros": 1},  # the double is 0 micro-dollars
    ],
    ids=repr,
)
def test_both_forms_disagreeing_are_invalid_argument_naming_the_micros(
    given: dict[str, object],
) -> None:
    with pytest.raises(InvalidArgument) as info:
        v.validate_config(config(**given))
    assert info.value.field == "config.budget_limit_micros"
    assert str(info.value).startswith("config.budget_limit_micros: ")


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"budget_limit_micros": -1}, "config.budget_limit_micros"),
        ({"budget_limit_micros": -(2**63)}, "config.budget_limit_micros"),
        ({"budget_limit_micros": v.BUDGET_MAX_MICROS + 1}, "config.budget_limit_micros"),
        ({"budget_limit_micros": 2**63 - 1}, "config.budget_limit_micros"),
        ({"budget_limit": 5.0, "budget_limit_micros": -5_000_000}, "config.budget_limit_micros"),
        # The double keeps today's rules, checked first.
        ({"budget_limit": -1.0}, "config.budget_limit"),
        ({"budget_limit": 10_000.5}, "config.budget_limit"),
        ({"budget_limit": float("nan"), "budget_limit_micros": 1}, "config.budget_limit"),
        ({"budget_limit": float("inf")}, "config.budget_limit"),
    ],
    ids=repr,
)
def test_out_of_range_budgets_are_invalid_argument_naming_the_field(
    given: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        v.validate_config(config(**given))
    assert info.value.field == field


def test_the_stored_budget_is_one_canonical_form() -> None:
    as_usd = convert.config_to_json(v.validate_config(config(budget_limit=0.412345)))
    as_micros = convert.config_to_json(v.validate_config(config(budget_limit_micros=412_345)))
    assert as_usd == as_micros
    assert (as_usd["budget_limit_micros"], as_usd["budget_limit"]) == (412_345, 0.412345)
    # Every stored key is a CampaignConfig field (the workers' config is built from it).
    assert convert.config_from_json(as_usd) == v.validate_config(config(budget_limit=0.412345))


@pytest.mark.parametrize("budget", [0.0, 0.1, 5.0, 0.412345, 10_000.0])
def test_a_config_stored_before_the_micros_compares_equal_to_a_new_submit(budget: float) -> None:
    """What idempotency compares (services/jobs/submits.py): a stored config through the
    message, against a new submit's config, here given in micros only."""
    old = convert.config_to_json(config(budget_limit=budget))
    del old["budget_limit_micros"]  # as stored before the field existed
    new = v.validate_config(config(budget_limit_micros=round(budget * 1_000_000)))
    assert convert.config_to_json(convert.config_from_json(old)) == convert.config_to_json(new)
    echoed = convert.config_from_json(old)
    assert echoed.budget_limit_micros == round(budget * 1_000_000)
    assert echoed.budget_limit == budget
    assert convert.budget_micros_of(old) == echoed.budget_limit_micros


def _job_row(stored: dict[str, object]) -> JobRow:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    metrics = Metrics(total_cost_micros=300_001, cost_by_provider={"a": 100_000, "b": 200_001})
    return JobRow(
        id="job_" + "0" * 32, campaign_id="cmp_1", user_id="alice", status="COMPLETED",
        stage="DONE", progress=100, version=9, config=stored, metrics=metrics.to_json(),
        error="", attempts=1, max_attempts=3, created_at=now, updated_at=now,
    )  # fmt: skip


def test_jobs_carry_both_forms_from_the_books_integers() -> None:
    stored = convert.config_to_json(v.validate_config(config(budget_limit_micros=412_345)))
    job = convert.job_proto(_job_row(stored))
    assert job.config.budget_limit_micros == 412_345 and job.config.budget_limit == 0.412345
    assert job.metrics.total_cost_micros == 300_001
    assert dict(job.metrics.cost_by_provider_micros) == {"a": 100_000, "b": 200_001}
    assert job.metrics.total_cost == 0.300001
    assert dict(job.metrics.cost_by_provider) == {"a": 0.1, "b": 0.200001}
    # The state the machine works from has the budget in micros.
    assert convert.state_of(_job_row(stored)).budget_micros == 412_345
    old = dict(stored)
    del old["budget_limit_micros"]
    assert convert.state_of(_job_row(old)).budget_micros == 412_345


def test_leads_carry_both_forms() -> None:
    row = LeadRow(
        id="lead_1", campaign_id="cmp_1", place_id="p0", business_name="Cafe", address="",
        phone="", website="", email="", email_status="valid", confidence_score=90,
        cost_micros=70_001, rating=4.5, review_count=3, from_cache=False,
        cost_by_provider={"sandbox": 70_001},
    )  # fmt: skip
    lead = convert.lead_proto(row)
    assert lead.cost_micros == 70_001 and lead.cost == 0.070001
