"""End to end, secrets never leave the processes that hold them: on a stack with real
(fake) provider keys, a JWT secret, a page-token secret and the services' NATS passwords,
logging at DEBUG, none of them appears in any process's log, in what the CLI prints
(minting a token, submitting, reading leads, being refused) or in the API's records."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from urllib.parse import quote

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.e2e import tokens as t
from tests.e2e.secured_stack import SUBMIT_AND_WATCH
from tests.e2e.tokens import run_cli
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

LOCKED_SECRET, LOCKED_PAGE_SECRET = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=8) as running:
        yield running


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, fakes: FakeProviders) -> Iterator[Stack]:
    """Real (fake) provider keys, a JWT secret and the services' NATS passwords, logging
    at DEBUG."""
    env = {
        **fakes.env(),
        **{"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": LOCKED_SECRET, "LOG_LEVEL": "DEBUG"},
        "PAGE_TOKEN_SECRET": LOCKED_PAGE_SECRET,
    }
    running = Stack(tmp_path_factory.mktemp("locked"), env=env)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_secrets_appear_in_no_log_output_or_record(locked: Stack, fakes: FakeProviders) -> None:
    with socket.create_connection(("127.0.0.1", locked.nats.port), timeout=5) as sock:
        info = json.loads(sock.makefile().readline().removeprefix("INFO "))
    assert info.get("auth_required") is True  # the services got in with their credentials

    outputs: dict[str, str] = {}
    minted = run_cli("token", "--user", "alice", env={"AUTH_JWT_SECRET": LOCKED_SECRET})
    assert minted.returncode == 0, minted.stderr
    cli = {"PROSPECT_TOKEN": minted.stdout.strip()}
    submitted = run_cli("--addr", locked.jobs_addr, "--json", *SUBMIT_AND_WATCH, env=cli)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = json.loads(submitted.stdout.splitlines()[0])["job_id"]
    # The JSON stream: the submit, each update, then the leads (the last update is the job's
    # final snapshot).
    lines = [json.loads(line) for line in submitted.stdout.splitlines()]
    final = [line["job"] for line in lines if "job" in line][-1]
    assert "sandbox" not in final["metrics"]["providers"].values()  # the keys were used
    for name, proc in {
        "token": minted,
        "submit": submitted,
        "leads": run_cli("--addr", locked.jobs_addr, "--json", "leads", job_id, env=cli),
        "refused": run_cli(
            "--addr", locked.jobs_addr, "get", job_id, env={"PROSPECT_TOKEN": "forged"}
        ),
    }.items():
        outputs[f"cli {name}"] = proc.stdout + proc.stderr
    assert "UNAUTHENTICATED" in outputs["cli refused"]

    md = t.bearer(minted.stdout.strip())
    with grpc.insecure_channel(locked.jobs_addr) as channel:
        api = jobs_pb2_grpc.JobServiceStub(channel)
        job = api.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=md)
        jobs = api.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md)
        leads = api.ListLeads(jobs_pb2.ListLeadsRequest(job_id=job_id), metadata=md)
    assert leads.leads
    outputs["records"] = json.dumps([MessageToDict(r) for r in (job, jobs, leads)])
    logs = {f"log {label}": text for label, text in locked.logs().items()}
    assert all(logs.values()), "a process logged nothing"

    known = {k: v for k, v in locked.extra_env.items() if k.endswith(("_KEY", "_SECRET"))}
    assert locked.nats.credentials is not None
    known.update(locked.nats.credentials.server_env())
    # three provider keys, the JWT and page-token secrets, three NATS passwords
    assert len(known) == 5 + 3
    found = [
        (name, where)
        for where, text in {**outputs, **logs}.items()
        for name, value in known.items()
        if value in text or quote(value) in text
    ]
    assert not found, found
