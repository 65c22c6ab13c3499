"""The one boundary from errors to statuses (``services.jobs.statuses.rich_status``): what an
unexpected error answers (nothing of it), and the reason table that code and README share.
Every other reason is checked end to end, on a real server, in tests/e2e/test_error_details.py.
"""

from __future__ import annotations

import re

from google.rpc import code_pb2, error_details_pb2

from prospect.v1 import jobs_pb2
from services.cli.stack import REPO_ROOT
from services.common.errors import ConfigError, InvalidArgument, Reason
from services.jobs.statuses import rich_status
from services.jobs.validation import validate_config


def test_an_unexpected_error_is_internal_with_nothing_of_it_sent() -> None:
    for exc in (RuntimeError("password=hunter2 at db:5432"), ConfigError("hunter2 missing")):
        status = rich_status(exc)
        assert (status.code, status.message) == (code_pb2.INTERNAL, "internal error")
        (packed,) = status.details
        info = error_details_pb2.ErrorInfo()
        assert packed.Unpack(info)
        assert (info.domain, info.reason, dict(info.metadata)) == ("prospect", "INTERNAL", {})
        assert b"hunter2" not in status.SerializeToString()


def test_the_readme_lists_every_reason_and_no_other() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n### Errors\n", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == {r.value for r in Reason}
    assert all(re.fullmatch(r"[A-Z]+(_[A-Z]+)*", r.value) and r.name == r.value for r in Reason)


def test_a_request_with_several_bad_fields_gets_one_violation_per_field() -> None:
    config = jobs_pb2.CampaignConfig(
        business_type="", location="Seattle", max_results=0, min_confidence_score=101,
        budget_limit=-1.0,
    )  # fmt: skip
    try:
        validate_config(config)
    except InvalidArgument as exc:
        status = rich_status(exc)
    else:
        raise AssertionError("an invalid config was accepted")
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert any(packed.Unpack(bad_request) for packed in status.details)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("config.business_type", "is required"),
        ("config.max_results", "must be between 1 and 100"),
        ("config.min_confidence_score", "must be between 0 and 100"),
        ("config.budget_limit", "must be a finite amount between 0 and 10,000 USD"),
    ]
    assert status.message.startswith("config.business_type: is required; config.max_results")
    valid = validate_config(jobs_pb2.CampaignConfig(
        business_type="cafe", location="Seattle", max_results=5))  # fmt: skip
    assert valid.max_results == 5
