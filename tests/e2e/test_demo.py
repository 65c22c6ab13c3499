"""End to end: the ``make run`` demo (``python -m services.cli.demo``) from start to clean
shutdown, and the process scan that checks nothing of it is left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.stack import Stack
from tests.e2e.cli import BAR_COMPLETED, summary_field, table_rows
from tests.e2e.processes import processes_mentioning

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT = 120.0


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
