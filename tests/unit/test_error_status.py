"""The one boundary from errors to statuses (``services.jobs.api.rich_status``): what an
unexpected error answers (nothing of it), and the reason table that code and README share.
Every other reason is checked end to end, on a real server, in tests/e2e/test_error_details.py.
"""

from __future__ import annotations

import re

from google.rpc import code_pb2, error_details_pb2

from services.cli.stack import REPO_ROOT
from services.common.errors import ConfigError, Reason
from services.jobs.api import rich_status


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
