"""End to end: the ``prospect`` command-line client as a subprocess against a real stack, and
the ``make run`` demo (``python -m services.cli.demo``) from start to clean shutdown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.cli.stack import REPO_ROOT, Stack, free_port

pytestmark = pytest.mark.e2e

CLI_TIMEOUT = 90.0  # per CLI call; the CLI's own RPC deadline is 30 s
DEMO_TIMEOUT = 120.0
MISSING_JOB = "job_" + "0" * 32
BAR_COMPLETED = re.compile(r"^\[#{20}\]\s+100%\s+COMPLETED\b", re.MULTILINE)


def run_cli(
    addr: str | None, *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``python -m services.cli [--addr addr] args...`` from the repo root."""
    argv = [sys.executable, "-m", "services.cli"]
    if addr is not None:
        argv += ["--addr", addr]
    return subprocess.run(
        [*argv, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a call that must have succeeded (its stderr in the failure message)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary_field(text: str, label: str) -> str:
    """The value of one ``label  value`` row of a job summary."""
    match = re.search(rf"^{re.escape(label)}\s{{2,}}(.+)$", text, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{text}"
    return match.group(1).strip()


def table_rows(text: str, first_header: str) -> list[str]:
    """The body lines of the table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header + " "))
    assert set(lines[start + 1].replace(" ", "")) == {"-"}, lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line)
    return rows


@dataclass
class Submitted:
    job_id: str
    final: dict[str, Any]  # the terminal Job as JSON
    output: str  # stdout of ``--json submit ... --watch``


@pytest.fixture(scope="module")
def finished(stack: Stack) -> Submitted:
    """One campaign submitted and watched to its end with ``--json``."""
    out = ok(
        run_cli(
            stack.jobs_addr,
            "--json",
            "submit",
            "coffee shop",
            "Seattle, WA",
            "--max-results",
            "4",
            "--watch",
        )
    )
    lines = json_lines(out)
    job_id = lines[0]["job_id"]
    return Submitted(job_id=job_id, final=lines[-1]["job"], output=out)


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
    first, updates = lines[0], lines[1:]
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


def test_leads_json_and_table_agree(stack: Stack, finished: Submitted) -> None:
    leads = json.loads(ok(run_cli(stack.jobs_addr, "--json", "leads", finished.job_id)))
    assert isinstance(leads, list)
    assert len(leads) == finished.final["metrics"]["qualified_leads"]
    place_ids = [lead["place_id"] for lead in leads]
    assert len(set(place_ids)) == len(place_ids) and all(place_ids)
    assert {lead["campaign_id"] for lead in leads} == {finished.final["campaign_id"]}
    scores = [lead["confidence_score"] for lead in leads]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 50
    assert round(sum(lead["cost"] for lead in leads), 6) == round(
        finished.final["metrics"]["total_cost"], 6
    )

    text = ok(run_cli(stack.jobs_addr, "leads", finished.job_id))
    rows = table_rows(text, "NAME")
    assert len(rows) == len(leads)
    for row, lead in zip(rows, leads, strict=True):
        assert row.startswith(lead["business_name"] + " "), (row, lead)
        assert f" {lead['confidence_score']} " in row
        assert (lead["email"] or "-") in row.split()
    assert re.search(rf"^{len(leads)} leads, \$[\d.,]+ in total$", text, re.MULTILINE), text


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


# --- the demo ---------------------------------------------------------------------------


def processes_mentioning(needle: str) -> list[str]:
    """Live processes whose command line or environment contains ``needle`` (via /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours
            continue
        if state != "Z" and (needle.encode() in cmdline or needle.encode() in environ):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {argv}")
    return found


def test_process_scan_sees_a_running_stack(stack: Stack) -> None:
    """The check used on the demo finds every process of a live stack."""
    found = processes_mentioning(str(stack.data_dir))
    pids = {str(child.pid) for child in stack.children() if child.is_running}
    assert len(pids) >= 4
    assert pids <= {line.split(":")[0] for line in found}, found


def test_demo_completes_from_any_directory_and_stops_everything(tmp_path: Path) -> None:
    cwd = tmp_path.resolve()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SANDBOX_LATENCY_MS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"

    assert re.search(r"^submitted job job_[0-9a-f]{32}: coffee shop in Seattle, WA", out, re.M)
    assert BAR_COMPLETED.search(out), out
    assert summary_field(out, "status") == "COMPLETED"
    rows = table_rows(out, "NAME")
    assert 0 < len(rows) <= 10
    assert len(rows) == int(summary_field(out, "qualified"))
    assert all(re.search(r"\s\d{1,3}\s.*\$[\d.,]+$", row) for row in rows), rows

    # Its data lives under the working directory, and every process of it has stopped.
    data_dir = cwd / "data" / "demo"
    logs = data_dir / "logs"
    assert logs.is_dir() and (data_dir / "prospect.db").is_file()
    assert processes_mentioning(str(data_dir)) == []
    for name in ("jobs", "discovery", "enrichment"):
        log = (logs / f"{name}.log").read_text()
        assert re.search(r"\bready\b", log), log
        assert re.search(rf"\b{name}\b.* stopped$", log, re.MULTILINE), log
    nats_log = (logs / "nats-server.log").read_text()
    assert "Server Exiting" in nats_log
