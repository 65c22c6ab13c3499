"""Ids are matched whole, and a page token's position is checked even when its signature is
good: both are InvalidArgument naming the field, never an error deeper down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services.common.errors import InvalidArgument
from services.jobs import page_tokens
from services.jobs import validation as v

JOB = "job_" + "0123456789abcdef" * 2
LEAD = "lead_" + "fedcba9876543210" * 2


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", " ", "\x00", "0"])
def test_ids_with_anything_after_them_are_refused(suffix: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^job_id: must look like job_"):
        v.validate_job_id(JOB + suffix)
    assert not v.is_job_id(JOB + suffix)
    assert not v.is_lead_id(LEAD + suffix)
    # The patterns themselves match whole, for callers still using .match.
    assert v.JOB_ID.match(JOB + suffix) is None
    assert v.LEAD_ID.match(LEAD + suffix) is None


def test_whole_ids_pass() -> None:
    assert v.validate_job_id(JOB) == JOB
    assert v.is_job_id(JOB) and v.is_lead_id(LEAD)
    assert not v.is_job_id(LEAD) and not v.is_lead_id(JOB)
    assert not v.is_job_id(None) and not v.is_lead_id(42)
    assert not v.is_job_id(JOB.upper().replace("JOB_", "job_"))


NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.mark.parametrize(
    "position",
    [
        {},
        {"c": NOW.isoformat()},
        {"i": JOB},
        {"c": "yesterday", "i": JOB},
        {"c": "", "i": JOB},
        {"c": 5, "i": JOB},
        {"c": None, "i": JOB},
        {"c": ["2026-01-02"], "i": JOB},
        {"c": NOW.replace(tzinfo=None).isoformat(), "i": JOB},  # naive: not what we sign
        {"c": "0001-01-01T00:00:00+05:00", "i": JOB},  # before datetime.min, in UTC
        {"c": NOW.isoformat(), "i": 7},
        {"c": NOW.isoformat(), "i": "x"},
        {"c": NOW.isoformat(), "i": JOB + "\n"},
        {"c": NOW.isoformat(), "i": JOB, "extra": 1},
    ],
)
def test_malformed_jobs_positions_are_invalid_argument(position: dict[str, Any]) -> None:
    tokens = page_tokens.PageTokens(b"k" * 32)
    decoded = tokens.decode(tokens.encode("jobs:ann:*", position), "jobs:ann:*")
    assert decoded == position  # the signature is good: only the position is wrong
    with pytest.raises(InvalidArgument, match=r"^page_token: is not a token this listing"):
        page_tokens.jobs_position(decoded)


def test_jobs_positions_give_utc_times() -> None:
    assert page_tokens.jobs_position({"c": NOW.isoformat(), "i": JOB}) == (NOW, JOB)
    east = NOW.astimezone(timezone(timedelta(hours=5)))
    assert page_tokens.jobs_position({"c": east.isoformat(), "i": JOB}) == (NOW, JOB)


@pytest.mark.parametrize("rank", ["3", None, 1.5, True, [1], -1, 2**31, 2**80, {"r": 1}], ids=repr)
def test_malformed_leads_positions_are_invalid_argument(rank: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^page_token: is not a token this listing"):
        page_tokens.leads_position({"r": rank})


def test_leads_positions_give_the_rank() -> None:
    assert page_tokens.leads_position({"r": 0}) == 0 and page_tokens.leads_position({"r": 99}) == 99
    with pytest.raises(InvalidArgument, match=r"^page_token:"):
        page_tokens.leads_position({"r": 1, "extra": 2})
    with pytest.raises(InvalidArgument, match=r"^page_token:"):
        page_tokens.leads_position({})
