"""The README's shell examples run as written.

Every ```sh block of README.md is either run here, against real processes, or marked
with an HTML comment right above it saying why it cannot run on this machine (a
Kubernetes cluster, say). What a test changes in a block to run it here, it says: free
ports instead of the documented ones, a temporary directory instead of ``data/``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import REPO_ROOT, free_port

README = (REPO_ROOT / "README.md").read_text()
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->\s*$")


def sh_blocks() -> list[tuple[str, str]]:
    """Each ```sh block's text, with the line above its fence."""
    out = []
    lines = README.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "```sh":
            end = lines.index("```", i + 1)
            out.append((lines[i - 1] if i else "", "\n".join(lines[i + 1 : end])))
    return out


def block(starting_with: str) -> str:
    """The one block whose first line starts with ``starting_with``."""
    (found,) = [text for _, text in sh_blocks() if text.startswith(starting_with)]
    return found


# The blocks the tests below run, by their first line.
RUN_HERE = ("make setup && mkdir -p data", "make run")


def test_every_example_is_run_or_says_why_not() -> None:
    for above, text in sh_blocks():
        first = text.splitlines()[0]
        if NOT_RUN.search(above):
            continue
        assert any(first.startswith(start) for start in RUN_HERE), (
            f"README example not run by a test and not marked as not runnable here: {first!r}"
        )


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Shells started in process groups of their own; each group killed on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(1)


def test_running_the_services_yourself(
    tmp_path: Path, shell: list[subprocess.Popen[bytes]]
) -> None:
    script = block("make setup && mkdir -p data")
    # Here: a free port for NATS (4222 may be taken), a free one for the API, a temporary
    # data directory; what the services are told follows from the same changes.
    nats_port, api = free_port(), f"127.0.0.1:{free_port()}"
    script = script.replace("-p 4222", f"-p {nats_port}").replace("data/", f"{tmp_path}/")
    script = script.replace("mkdir -p data", f"mkdir -p {tmp_path}")
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "JOBS_GRPC_ADDR": api,
        "DATA_DIR": str(tmp_path),
        "SANDBOX_LATENCY_MS": "0",
    }
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        ["bash", "-ec", script + "\nwait"], cwd=REPO_ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    shell.append(proc)
    with grpc.insecure_channel(api) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        config = jobs_pb2.CampaignConfig(
            business_type="coffee shop", location="Seattle, WA", max_results=3,
            min_confidence_score=50,
        )  # fmt: skip
        request = jobs_pb2.SubmitCampaignRequest(config=config)
        job_id = stub.SubmitCampaign(request, timeout=60, wait_for_ready=True).job_id
        deadline = time.monotonic() + 60
        while True:
            job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)
            if job.status == jobs_pb2.JOB_STATUS_COMPLETED:
                break
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, f"{job}\n{(tmp_path / 'run.log').read_text()}"
            time.sleep(0.2)
    assert job.metrics.qualified_leads > 0
    conf = (tmp_path / "nats-auth.conf").read_text()
    assert "authorization" in conf and "NATS_JOBS_PASSWORD" in conf
    output = (tmp_path / "run.log").read_text()
    assert "Traceback" not in output
    assert not re.search(r"\bp[0-9a-f]{48}\b", output + conf)  # no password written out


def test_the_two_commands() -> None:
    """``make run`` as written; ``make test`` is what runs this test."""
    lines = [line.split("#")[0].strip() for line in block("make run").splitlines()]
    assert lines == ["make run", "make test"]
    done = subprocess.run(
        ["make", "run"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SANDBOX_LATENCY_MS": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "COMPLETED" in done.stdout and "Traceback" not in done.stdout + done.stderr
