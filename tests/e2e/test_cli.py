"""End to end: the ``prospect`` command-line client as a subprocess against a real stack:
submit, watch, get, list, cancel and their errors. Its leads (formats, files, ``submit
--watch``) are in ``test_cli_leads.py``, the ``make run`` demo in ``test_demo.py``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.stack import REPO_ROOT, Stack, free_port
from tests.e2e.cli import (
    BAR_COMPLETED,
    CLI_TIMEOUT,
    MISSING_JOB,
    Submitted,
    json_lines,
    ok,
    run_cli,
    submit_watched,
    summary_field,
    table_rows,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def finished(stack: Stack) -> Submitted:
    """One campaign submitted and watched to its end with ``--json``."""
    return submit_watched(stack.jobs_addr)


def test_submit_and_watch_prints_progress_and_a_completed_summary(stack: Stack) -> None:
    proc = run_cli(
        stack.jobs_addr, "submit", "coffee shop", "Seattle, WA", "--max-results", "4", "--watch"
    )
    out = ok(proc)
    match = re.search(
        r"^submitted job (job_[0-9a-f]{32}) \(campaign cmp_\w+, PENDING\)$", out, re.M
    )
    assert match, out
    assert BAR_COMPLETED.search(out), out
    assert re.search(r"^\[.*\]\s+\d+%\s+ENRICHING\s.*contacts", out, re.MULTILINE), out
    assert summary_field(out, "job") == match.group(1)
    assert summary_field(out, "status") == "COMPLETED"
    assert summary_field(out, "stage") == "DONE (100%)"
    assert summary_field(out, "query") == "coffee shop in Seattle, WA"
    assert 0 < int(summary_field(out, "qualified")) <= 4
    assert proc.stderr == ""


def test_submit_json_is_one_document_per_line(finished: Submitted) -> None:
    lines = json_lines(finished.output)
    first, updates, last = lines[0], lines[1:-1], lines[-1]
    assert re.fullmatch(r"job_[0-9a-f]{32}", finished.job_id)
    assert first["campaign_id"].startswith("cmp_")
    assert first["status"] == "JOB_STATUS_PENDING"
    assert updates, finished.output
    assert all(u["job"]["id"] == finished.job_id for u in updates)
    versions = [int(u["job"]["version"]) for u in updates]
    assert versions == sorted(set(versions))
    progress = [u["job"]["progress"] for u in updates]
    assert progress == sorted(progress)
    assert all(u["message"] for u in updates)
    final = finished.final
    assert final["status"] == "JOB_STATUS_COMPLETED" and final["stage"] == "STAGE_DONE"
    assert final["progress"] == 100
    assert 0 < final["metrics"]["qualified_leads"] <= 4
    assert final["config"]["max_results"] == 4
    assert [u["job"]["status"] for u in updates].count("JOB_STATUS_COMPLETED") == 1
    # The last line: every lead of the job, after its final update.
    assert list(last) == ["leads"]
    assert len(last["leads"]) == final["metrics"]["qualified_leads"]
    assert {lead["campaign_id"] for lead in last["leads"]} == {final["campaign_id"]}


def test_get_shows_the_finished_job(stack: Stack, finished: Submitted) -> None:
    got = json.loads(ok(run_cli(stack.jobs_addr, "--json", "get", finished.job_id)))
    assert got["id"] == finished.job_id
    assert got["status"] == "JOB_STATUS_COMPLETED"
    assert got["version"] == finished.final["version"]
    assert got["metrics"] == finished.final["metrics"]

    text = ok(run_cli(stack.jobs_addr, "get", finished.job_id))
    assert summary_field(text, "job") == finished.job_id
    assert summary_field(text, "campaign") == got["campaign_id"]
    assert summary_field(text, "status") == "COMPLETED"
    assert summary_field(text, "qualified") == str(got["metrics"]["qualified_leads"])
    assert summary_field(text, "query") == "coffee shop in Seattle, WA"


def test_list_shows_the_job(stack: Stack, finished: Submitted) -> None:
    page = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list")))
    by_id = {job["id"]: job for job in page["jobs"]}
    assert by_id[finished.job_id]["status"] == "JOB_STATUS_COMPLETED"

    completed = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list", "--status", "completed")))
    assert finished.job_id in [job["id"] for job in completed["jobs"]]
    assert {job["status"] for job in completed["jobs"]} == {"JOB_STATUS_COMPLETED"}
    # The README's spelling, any other case, and the enum's own name: the same filter.
    for spelling in ("COMPLETED", "Completed", "JOB_STATUS_COMPLETED", "job_status_completed"):
        same = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list", "--status", spelling)))
        assert same["jobs"] == completed["jobs"], spelling
    failed = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list", "--status", "failed")))
    assert finished.job_id not in [job["id"] for job in failed["jobs"]]

    text = ok(run_cli(stack.jobs_addr, "list"))
    rows = [row for row in table_rows(text, "JOB") if row.startswith(finished.job_id + " ")]
    assert len(rows) == 1, text
    cells = rows[0].split()
    assert cells[1:4] == ["COMPLETED", "DONE", "100%"]
    assert "coffee shop in Seattle, WA" in rows[0]


def test_list_pages_follow_the_printed_token(stack: Stack, finished: Submitted) -> None:
    ok(run_cli(stack.jobs_addr, "submit", "bakery", "Portland, OR", "--max-results", "2"))
    all_ids = [j["id"] for j in json.loads(ok(run_cli(stack.jobs_addr, "--json", "list")))["jobs"]]
    assert len(all_ids) >= 2 and finished.job_id in all_ids

    seen: list[str] = []
    token = ""
    for _ in range(len(all_ids) + 1):
        text = ok(run_cli(stack.jobs_addr, "list", "--page-size", "1", "--page-token", token))
        seen += [row.split()[0] for row in table_rows(text, "JOB")]
        match = re.search(r"^next page: --page-token (\S+)$", text, re.MULTILINE)
        if not match:
            break
        token = match.group(1)
    assert seen[: len(all_ids)] == all_ids


def test_list_an_unknown_status_is_a_usage_error() -> None:
    proc = run_cli(f"127.0.0.1:{free_port()}", "list", "--status", "done")
    assert proc.returncode == 2, proc
    assert "argument --status: invalid status 'done'" in proc.stderr, proc.stderr
    assert "completed" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_help_lists_the_exit_codes() -> None:
    text = ok(run_cli(None, "--help"))
    codes = text[text.index("exit codes:") :]
    found = re.findall(r"^  (\d+) ", codes, re.MULTILINE)
    assert found == ["0", "1", "2", "130"], codes


def test_leads_of_a_missing_job_fail(stack: Stack) -> None:
    proc = run_cli(stack.jobs_addr, "leads", MISSING_JOB)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: NOT_FOUND: "), proc.stderr


def test_watch_a_finished_job_shows_its_end(stack: Stack, finished: Submitted) -> None:
    text = ok(run_cli(stack.jobs_addr, "watch", finished.job_id))
    bars = [line for line in text.splitlines() if line.startswith("[")]
    assert len(bars) == 1 and BAR_COMPLETED.match(bars[0]), text
    assert summary_field(text, "status") == "COMPLETED"
    assert summary_field(text, "job") == finished.job_id

    updates = json_lines(ok(run_cli(stack.jobs_addr, "--json", "watch", finished.job_id)))
    assert len(updates) == 1
    assert updates[0]["job"]["status"] == "JOB_STATUS_COMPLETED"
    assert updates[0]["job"]["version"] == finished.final["version"]

    # Resuming after the last version: nothing new to show, still the COMPLETED exit.
    version = finished.final["version"]
    after = run_cli(stack.jobs_addr, "watch", finished.job_id, "--after-version", version)
    text = ok(after)
    assert not [line for line in text.splitlines() if line.startswith("[")], text
    assert summary_field(text, "status") == "COMPLETED"


def test_cancel_a_finished_job_is_a_failed_precondition(stack: Stack, finished: Submitted) -> None:
    proc = run_cli(stack.jobs_addr, "cancel", finished.job_id)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: FAILED_PRECONDITION: "), proc.stderr
    assert finished.job_id in proc.stderr
    assert proc.stdout == ""
    got = json.loads(ok(run_cli(stack.jobs_addr, "--json", "get", finished.job_id)))
    assert got["status"] == "JOB_STATUS_COMPLETED"
    assert got["version"] == finished.final["version"]


def test_get_a_missing_job_is_not_found(stack: Stack) -> None:
    proc = run_cli(stack.jobs_addr, "get", MISSING_JOB)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: NOT_FOUND: "), proc.stderr
    assert MISSING_JOB in proc.stderr
    assert proc.stdout == ""


def test_submit_without_a_business_type_is_invalid(stack: Stack) -> None:
    before = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list", "--page-size", "100")))
    proc = run_cli(stack.jobs_addr, "submit", "", "x")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: INVALID_ARGUMENT: "), proc.stderr
    assert "config.business_type" in proc.stderr
    assert proc.stdout == ""
    after = json.loads(ok(run_cli(stack.jobs_addr, "--json", "list", "--page-size", "100")))
    assert [j["id"] for j in after["jobs"]] == [j["id"] for j in before["jobs"]]


def test_console_script_and_addr_from_the_environment(stack: Stack, finished: Submitted) -> None:
    script = Path(sys.executable).parent / "prospect"
    assert script.is_file(), script
    env = {**os.environ, "JOBS_GRPC_ADDR": stack.jobs_addr}
    proc = subprocess.run(
        [str(script), "--json", "get", finished.job_id],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert json.loads(ok(proc))["id"] == finished.job_id
    assert json.loads(ok(run_cli(None, "--json", "get", finished.job_id, env=env)))["id"] == (
        finished.job_id
    )


@pytest.mark.parametrize(
    "args",
    [
        ("get", MISSING_JOB),
        ("list",),
        ("leads", MISSING_JOB),
        ("cancel", MISSING_JOB),
        ("submit", "coffee shop", "Seattle, WA"),
    ],
    ids=lambda args: args[0],
)
def test_nothing_listening_is_a_clear_unavailable_error(args: tuple[str, ...]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    proc = run_cli(addr, *args, timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("error: UNAVAILABLE: "), proc.stderr
    assert "127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
