"""Running the ``prospect`` command-line client as a subprocess, and reading what it prints:
shared by the CLI's end-to-end tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from services.cli.stack import REPO_ROOT

CLI_TIMEOUT = 90.0  # per CLI call; the CLI's own RPC deadline is 30 s
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
    leads: list[dict[str, Any]]  # the last line of the stream: {"leads": [...]}
    output: str  # stdout of ``--json submit ... --watch``


def submit_watched(addr: str, *args: str) -> Submitted:
    """``--json submit "coffee shop" "Seattle, WA" --max-results 4 --watch`` (+ ``args``)."""
    query = ("coffee shop", "Seattle, WA", "--max-results", "4", "--watch")
    out = ok(run_cli(addr, "--json", "submit", *query, *args))
    lines = json_lines(out)
    job_id = lines[0]["job_id"]
    return Submitted(job_id=job_id, final=lines[-2]["job"], leads=lines[-1]["leads"], output=out)
