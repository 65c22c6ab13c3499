"""End to end: ``prospect leads`` and the leads ``submit --watch`` prints, as a table, JSON
and CSV, on stdout or written to a file, against a real stack."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.cli.render import CSV_COLUMNS
from services.cli.stack import REPO_ROOT, Stack
from tests.e2e.cli import (
    CLI_TIMEOUT,
    MISSING_JOB,
    Submitted,
    ok,
    run_cli,
    submit_watched,
    summary_field,
    table_rows,
)

pytestmark = pytest.mark.e2e

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(scope="module")
def finished(stack: Stack) -> Submitted:
    """One campaign submitted and watched to its end with ``--json``."""
    return submit_watched(stack.jobs_addr)


@pytest.fixture(scope="module")
def leads(stack: Stack, finished: Submitted) -> list[dict[str, Any]]:
    """``--json leads JOB``: every lead of the finished job, as the server sent it."""
    found = json.loads(ok(run_cli(stack.jobs_addr, "--json", "leads", finished.job_id)))
    assert isinstance(found, list) and found
    return found


def expected_cell(text: str) -> str:
    return "'" + text if text.startswith(TRIGGERS) else text


def read_csv(data: bytes) -> list[list[str]]:
    """RFC 4180 bytes back to rows, checking the encoding and line ends on the way."""
    assert not data.startswith(b"\xef\xbb\xbf"), "a byte order mark"
    text = data.decode("utf-8")
    assert text.endswith("\r\n"), text[-20:]
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


def assert_csv_matches(rows: list[list[str]], leads: list[dict[str, Any]]) -> None:
    """Header, then one record per lead in order, every field equal to the JSON's."""
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == len(leads) + 1
    for rank, (row, lead) in enumerate(zip(rows[1:], leads, strict=True), start=1):
        cells = dict(zip(CSV_COLUMNS, row, strict=True))
        assert cells["rank"] == str(rank)
        for name in ("business_name", "address", "phone", "website", "email", "email_status"):
            assert cells[name] == expected_cell(lead[name]), (name, cells, lead)
        assert float(cells["rating"]) == pytest.approx(lead["rating"])
        assert int(cells["review_count"]) == lead["review_count"]
        assert int(cells["confidence_score"]) == lead["confidence_score"]
        assert cells["from_cache"] == ("true" if lead["from_cache"] else "false")
        assert float(cells["cost_usd"]) == pytest.approx(lead["cost"], abs=1e-6)
        by_provider = dict(
            pair.split("=") for pair in cells["cost_by_provider_usd"].split("; ") if pair
        )
        assert by_provider.keys() == lead["cost_by_provider"].keys()
        for provider, cost in lead["cost_by_provider"].items():
            assert float(by_provider[provider]) == pytest.approx(cost, abs=1e-6)
        assert cells["lead_id"] == lead["id"] and lead["id"]
        assert cells["place_id"] == lead["place_id"]
        assert cells["campaign_id"] == lead["campaign_id"]
        assert cells["email_source"] == lead["email_source"]


def test_leads_json_and_table_agree(
    stack: Stack, finished: Submitted, leads: list[dict[str, Any]]
) -> None:
    assert len(leads) == finished.final["metrics"]["qualified_leads"]
    assert leads == finished.leads  # what submit --watch --json printed last
    place_ids = [lead["place_id"] for lead in leads]
    assert len(set(place_ids)) == len(place_ids) and all(place_ids)
    assert {lead["campaign_id"] for lead in leads} == {finished.final["campaign_id"]}
    scores = [lead["confidence_score"] for lead in leads]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 50
    assert round(sum(lead["cost"] for lead in leads), 6) == round(
        finished.final["metrics"]["total_cost"], 6
    )
    as_format = ok(run_cli(stack.jobs_addr, "leads", finished.job_id, "--format", "json"))
    assert json.loads(as_format) == leads

    text = ok(run_cli(stack.jobs_addr, "leads", finished.job_id))
    header = text.splitlines()[0].split()
    assert header[:3] == ["NAME", "ADDRESS", "RATING"] and header[-1] == "COST", header
    rows = table_rows(text, "NAME")
    assert len(rows) == len(leads)
    for row, lead in zip(rows, leads, strict=True):
        assert row.startswith(lead["business_name"] + " "), (row, lead)
        assert f" {lead['address'] or '-'} " in row, (row, lead)
        if lead["review_count"]:
            assert f" {lead['rating']:.1f} ({lead['review_count']:,}) " in row, (row, lead)
        assert f" {lead['confidence_score']} " in row
        assert (lead["email"] or "-") in row.split()
    assert re.search(rf"^{len(leads)} leads, \$[\d.,]+ in total$", text, re.MULTILINE), text
    # An explicit --format wins over --json.
    assert ok(
        run_cli(stack.jobs_addr, "--json", "leads", finished.job_id, "--format", "table")
    ) == (text)


def test_leads_csv_on_stdout_round_trips(
    stack: Stack, finished: Submitted, leads: list[dict[str, Any]]
) -> None:
    # The bytes as written (run_cli's text mode would turn each CRLF into LF), in a locale
    # whose encoding is not UTF-8: CSV is UTF-8 all the same.
    argv = [sys.executable, "-m", "services.cli", "--addr", stack.jobs_addr]
    env = {**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "latin-1"}
    proc = subprocess.run(
        [*argv, "leads", finished.job_id, "--format", "csv"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == b"", proc
    raw = proc.stdout
    assert raw.count(b"\r\n") == len(leads) + 1, raw[:200]
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert_csv_matches(read_csv(raw), leads)


def test_leads_csv_to_a_file(
    stack: Stack, finished: Submitted, leads: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "leads.csv"
    proc = run_cli(
        stack.jobs_addr, "leads", finished.job_id, "--format", "csv", "--output", str(path)
    )
    assert ok(proc) == ""
    assert proc.stderr == f"wrote {len(leads)} leads to {path}\n"
    data = path.read_bytes()
    assert data.count(b"\r\n") == len(leads) + 1 and b"\n" not in data.replace(b"\r\n", b"")
    assert_csv_matches(read_csv(data), leads)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not the temp file's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]  # no temp file left


def test_output_is_replaced_whole_or_not_at_all(
    stack: Stack, finished: Submitted, leads: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "leads.json"
    path.write_text("previous export\n")
    path.chmod(0o640)

    failed = run_cli(stack.jobs_addr, "leads", MISSING_JOB, "--output", str(path))
    assert failed.returncode == 2 and failed.stderr.startswith("error: NOT_FOUND: ")
    assert path.read_text() == "previous export\n"

    nowhere = tmp_path / "missing-dir" / "leads.csv"
    failed = run_cli(stack.jobs_addr, "leads", finished.job_id, "--output", str(nowhere))
    assert failed.returncode == 2, failed
    assert failed.stderr.startswith(f"error: cannot write {nowhere}: "), failed.stderr
    assert "Traceback" not in failed.stderr

    ok(run_cli(stack.jobs_addr, "--json", "leads", finished.job_id, "--output", str(path)))
    assert json.loads(path.read_text()) == leads
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the replaced file's mode kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.json"]


def test_submit_watch_prints_the_leads_table_after_the_summary(stack: Stack) -> None:
    out = ok(
        run_cli(stack.jobs_addr, "submit", "bakery", "Austin, TX", "--max-results", "3", "--watch")
    )
    job_id = summary_field(out, "job")
    lines = out.splitlines()
    summary_at = next(i for i, line in enumerate(lines) if line.startswith("status "))
    table_at = next(i for i, line in enumerate(lines) if line.startswith("NAME "))
    assert summary_at < table_at, out
    rows = table_rows(out, "NAME")
    assert len(rows) == int(summary_field(out, "qualified")) > 0
    leads = json.loads(ok(run_cli(stack.jobs_addr, "--json", "leads", job_id)))
    assert [row.split("  ")[0] for row in rows] == [lead["business_name"] for lead in leads]
    assert lines[-1].endswith(" in total"), out


def test_submit_watch_csv_to_a_file(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    args = ("submit", "tea house", "Boston, MA", "--max-results", "3", "--watch")
    proc = run_cli(stack.jobs_addr, *args, "--format", "csv", "--output", str(path))
    out = ok(proc)
    assert summary_field(out, "status") == "COMPLETED"
    assert "business_name" not in out  # the CSV went to the file only
    job_id = summary_field(out, "job")
    leads = json.loads(ok(run_cli(stack.jobs_addr, "--json", "leads", job_id)))
    assert len(leads) == int(summary_field(out, "qualified")) > 0
    assert_csv_matches(read_csv(path.read_bytes()), leads)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("submit", "a", "b", "--format", "csv"), "apply to the leads of --watch"),
        (("--json", "submit", "a", "b", "--watch", "--format", "csv"), "needs --output FILE"),
        (("leads", "JOB", "--format", "xml"), "invalid choice: 'xml'"),
    ],
    ids=["no-watch", "csv-in-json-stream", "unknown-format"],
)
def test_leads_options_that_cannot_work_are_usage_errors(
    stack: Stack, args: tuple[str, ...], message: str
) -> None:
    before = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list", "--page-size", "100")))
    proc = run_cli(stack.jobs_addr, *args)
    assert proc.returncode == 2, proc
    assert message in proc.stderr and proc.stdout == "", proc.stderr
    after = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list", "--page-size", "100")))
    assert after["jobs"] == before["jobs"]  # nothing was submitted
