"""The README's shell examples run as written.

Every ```sh block of README.md is either run here, against real processes, or marked
with an HTML comment right above it saying why it cannot run on this machine (a
Kubernetes cluster, say). What a test changes in a block to run it here, it says: free
ports instead of the documented ones, a temporary directory instead of ``data/``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

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
RUN_HERE = (
    "make setup && mkdir -p data",
    "make run",
    "make up",
    "export AUTH_JWT_SECRET=",
    "grpcurl -plaintext 127.0.0.1:50051 list",
)


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
            # SIGTERM first: `make up` stops its services (in sessions of their own, out of
            # reach of the group) before it exits; whatever is left of the group is killed.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


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


# -- the blocks around `make up` ------------------------------------------------------------


class Session:
    """One terminal of a README block: its environment, ``make up`` started from it in a
    process group of its own (the "other terminal"), each later line run by bash."""

    def __init__(self, tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
        # Here: a free API port instead of 50051 and a temporary DATA_DIR (make up and the
        # CLI both read JOBS_GRPC_ADDR), the sandbox without latency.
        self.addr = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ, "JOBS_GRPC_ADDR": self.addr, "DATA_DIR": str(tmp_path / "data"),
            "SANDBOX_LATENCY_MS": "0",
        }  # fmt: skip
        for name in ("AUTH_MODE", "AUTH_JWT_SECRET", "PAGE_TOKEN_SECRET", "PROSPECT_TOKEN"):
            self.env.pop(name, None)
        self.log = tmp_path / "make-up.log"
        self._started = started

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        """Run ``line`` in bash with this session's environment; ``export`` lines keep
        what they set."""
        script = f'{line}\nenv -0 > "$ENV_OUT"'
        out = Path(self.env["DATA_DIR"]).parent / "env.out"
        done = subprocess.run(
            ["bash", "-ec", script], cwd=REPO_ROOT, env={**self.env, "ENV_OUT": str(out)},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode == 0 and line.startswith("export "):
            pairs = (item.split("=", 1) for item in out.read_text().split("\0") if "=" in item)
            self.env = {k: v for k, v in pairs if k != "ENV_OUT"}
        return done

    def make_up(self, line: str) -> None:
        """``make up`` (with whatever the line sets before it) until its banner is out."""
        proc = subprocess.Popen(
            ["bash", "-c", line], cwd=REPO_ROOT, env=self.env, stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self._started.append(proc)
        deadline = time.monotonic() + 180
        while self.addr not in self.log.read_text(errors="replace"):
            assert proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while "jobs" not in self.log.read_text(errors="replace") or not self._answers():
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def _answers(self) -> bool:
        with grpc.insecure_channel(self.addr) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
            except grpc.FutureTimeoutError:
                return False
        return True


def run_block(session: Session, text: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each line of ``text`` in ``session``; JOB_ID stands for the job the block submitted
    (the CLI's JSON listing names it). By first word and line, what each printed."""
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    job_id = ""
    for raw in text.splitlines():
        line = raw.split("  #")[0].strip()
        if line.endswith("make up"):
            session.make_up(line)
            continue
        line = line.replace("JOB_ID", job_id)
        done = session.run(line)
        results[line] = done
        if " cancel " in line and done.returncode == 2:
            # The README's last line cancels the job it watched to the end: refused, and
            # saying why.
            assert "FAILED_PRECONDITION" in done.stderr, done.stderr
            continue
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if " submit " in line:
            listed = session.run(".venv/bin/prospect --json list")
            jobs = json.loads(listed.stdout)["jobs"]
            job_id = max(jobs, key=lambda job: str(job["created_at"]))["id"]
    return results


@pytest.fixture
def session(tmp_path: Path, shell: list[subprocess.Popen[bytes]]) -> Session:
    return Session(tmp_path, shell)


def test_the_command_line_client(session: Session, tmp_path: Path) -> None:
    results = run_block(session, block("make up"))
    submitted = next(r for line, r in results.items() if " submit " in line)
    assert "COMPLETED" in submitted.stdout
    listed = next(r for line, r in results.items() if "list --status COMPLETED" in line)
    assert listed.stdout.strip()
    rows = list(csv.reader((REPO_ROOT / "leads.csv").open(newline="", encoding="utf-8")))
    (REPO_ROOT / "leads.csv").unlink()
    assert rows[0][:2] == ["rank", "business_name"] and len(rows) > 1


def test_a_token_for_local_use(session: Session) -> None:
    results = run_block(session, block("export AUTH_JWT_SECRET="))
    assert "jwt" in session.log.read_text() or session.env["AUTH_MODE"] == "jwt"
    submitted = next(r for line, r in results.items() if " submit " in line)
    assert "COMPLETED" in submitted.stdout
    service = next(r for line, r in results.items() if "--role service" in line)
    assert service.stdout.count(".") == 2  # a JWT


# -- grpcurl, through the server's reflection ------------------------------------------------


def grpcurl(channel: grpc.Channel, args: list[str]) -> list[dict[str, object]]:
    """What ``grpcurl -plaintext [-d JSON] ADDR (list | SERVICE/METHOD)`` does, done with
    the server's reflection (no grpcurl binary here): list the services, or resolve the
    method's types from the server and call it with the JSON body."""
    body = args[args.index("-d") + 1] if "-d" in args else "{}"
    target = args[-1]
    database = ProtoReflectionDescriptorDatabase(channel)
    if target == "list":
        return [{"service": name} for name in database.get_services()]
    pool = descriptor_pool.DescriptorPool(database)
    service_name, method_name = target.split("/")
    method = pool.FindServiceByName(service_name).methods_by_name[method_name]
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(body, request_type())
    path = f"/{service_name}/{method_name}"
    if method.server_streaming:
        call = channel.unary_stream(path, request_serializer=request_type.SerializeToString,
                                    response_deserializer=response_type.FromString)  # fmt: skip
        return [json_format.MessageToDict(m) for m in call(request, timeout=60)]
    unary = channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                response_deserializer=response_type.FromString)  # fmt: skip
    return [json_format.MessageToDict(unary(request, timeout=30))]


def test_grpcurl_examples(session: Session, tmp_path: Path) -> None:
    session.make_up("make up")
    text = block("grpcurl -plaintext 127.0.0.1:50051 list").replace("\\\n", " ")
    commands, pending = [], ""
    for line in text.splitlines():  # a command ends at a newline outside quotes
        pending = f"{pending}\n{line}" if pending else line
        with contextlib.suppress(ValueError):
            commands.append(shlex.split(pending))
            pending = ""
    assert not pending and len(commands) == 4, commands
    job_id = ""
    with grpc.insecure_channel(session.addr) as channel:
        for args in commands:
            args = [a.replace("127.0.0.1:50051", session.addr) for a in args]
            line = " ".join(args)
            assert args[:2] == ["grpcurl", "-plaintext"], line
            if "job_..." in line:
                args = [a.replace("job_...", job_id) for a in args]
            answers = grpcurl(channel, args[2:])
            if args[-1] == "list":
                assert {"service": "prospect.v1.JobService"} in answers
            elif args[-1].endswith("/SubmitCampaign"):
                job_id = str(answers[0]["jobId"])
            elif args[-1].endswith("/WatchJob"):
                assert answers[-1]["job"]["status"] == "JOB_STATUS_COMPLETED"  # type: ignore[index]
            else:
                assert answers == [{"status": "SERVING"}]
