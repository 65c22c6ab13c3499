"""End to end, against real stacks: JWT on every RPC, tenants that never see each other,
service tokens, per-user limits, TLS, AUTH_MODE=none only on loopback, and secrets that
never leave the processes that hold them."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import NatsServer, ServiceProcess, Stack, free_port
from services.jobs.page_tokens import PageTokens
from tests.e2e import tokens as t
from tests.e2e.tokens import RPCS, Metadata, failure, invoke, job_ids, run_cli, submit
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

SECRET, PAGE_SECRET = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
ISSUER, AUDIENCE = "https://auth.prospect.test", "prospect-jobs"
AUTH_ENV = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET, "SANDBOX_LATENCY_MS": "5"}
AUTH_ENV |= {"PAGE_TOKEN_SECRET": PAGE_SECRET}
AUTH_ENV |= {"AUTH_JWT_ISSUER": ISSUER, "AUTH_JWT_AUDIENCE": AUDIENCE}
JOB_RPCS = ("GetJob", "WatchJob", "CancelJob", "ListLeads")  # those naming a job
Code = grpc.StatusCode


def token(user: str, *, role: str | None = None, key: str = SECRET, **claims: object) -> str:
    payload = {**t.claims(user, issuer=ISSUER, audience=AUDIENCE, role=role), **claims}
    return t.hs256(key, {k: v for k, v in payload.items() if v is not None})


def as_user(user: str) -> Metadata:
    return t.bearer(token(user))


SERVICE = t.bearer(token("scheduler", role="service"))


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, Path]:
    private, public = t.rsa_keypair()
    path = tmp_path_factory.mktemp("keys") / "jwt-public.pem"
    path.write_bytes(public)
    return private, public, path


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, rsa_keys: tuple[bytes, bytes, Path]
) -> Iterator[Stack]:
    """AUTH_MODE=jwt (HS256), plus a second jobs replica ("jobs-rs") verifying RS256."""
    running = Stack(tmp_path_factory.mktemp("secured"), env=AUTH_ENV)
    try:
        running.start()
        rs_env = {"AUTH_JWT_SECRET": "", "AUTH_JWT_PUBLIC_KEY": str(rsa_keys[2])}
        rs_env["JOBS_GRPC_ADDR"] = f"127.0.0.1:{free_port()}"
        running.add_service("jobs", label="jobs-rs", env=rs_env).wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stub(secured: Stack) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(secured.jobs_addr) as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


@pytest.fixture(scope="module")
def rs_stub(secured: Stack) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(secured.processes["jobs-rs"].grpc_addr or "") as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


@pytest.fixture(scope="module")
def alice_job(stub: jobs_pb2_grpc.JobServiceStub) -> jobs_pb2.Job:
    """A finished job of alice's."""
    return t.watch_to_end(stub, submit(stub, as_user("alice")), as_user("alice"))


# -- isolation ----------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", JOB_RPCS)
def test_another_users_job_is_not_found_exactly_like_an_unknown_one(
    stub: jobs_pb2_grpc.JobServiceStub, alice_job: jobs_pb2.Job, rpc: str
) -> None:
    fresh = submit(stub, as_user("alice"))  # most likely unfinished: cancel must not leak
    for job_id in (alice_job.id, fresh):
        code, details = failure(partial(invoke, stub, rpc, as_user("bob"), job_id))
        unknown_code, unknown_details = failure(partial(invoke, stub, rpc, as_user("bob")))
        assert code == unknown_code == Code.NOT_FOUND
        assert details.replace(job_id, "<id>") == unknown_details.replace(t.UNKNOWN_JOB, "<id>")
        assert "alice" not in details
    again = stub.GetJob(jobs_pb2.GetJobRequest(job_id=alice_job.id), metadata=as_user("alice"))
    assert again.status == jobs_pb2.JOB_STATUS_COMPLETED and again.version == alice_job.version
    assert t.watch_to_end(stub, fresh, as_user("alice")).status == jobs_pb2.JOB_STATUS_COMPLETED
    if rpc == "CancelJob":  # alice's own finished job: it exists, for her
        code, _ = failure(partial(invoke, stub, rpc, as_user("alice"), alice_job.id))
        assert code == Code.FAILED_PRECONDITION
    else:
        assert invoke(stub, rpc, as_user("alice"), alice_job.id) is not None


def test_list_jobs_shows_only_the_callers_jobs(
    stub: jobs_pb2_grpc.JobServiceStub, alice_job: jobs_pb2.Job
) -> None:
    alices = {alice_job.id, submit(stub, as_user("alice"))}
    bobs = {submit(stub, as_user("bob")), submit(stub, as_user("bob"))}
    seen: list[jobs_pb2.Job] = []
    page_token = ""
    while True:  # page by page, so the pagination is scoped too
        request = jobs_pb2.ListJobsRequest(page_size=1, page_token=page_token)
        page = stub.ListJobs(request, metadata=as_user("bob"), timeout=t.RPC_TIMEOUT)
        seen += page.jobs
        if not (page_token := page.next_page_token):
            break
    assert bobs <= {j.id for j in seen} and not alices & {j.id for j in seen}
    assert {j.user_id for j in seen} == {"bob"}
    assert alices <= job_ids(stub, as_user("alice")) and not bobs & job_ids(stub, as_user("alice"))
    first = stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=as_user("alice"))
    stolen = jobs_pb2.ListJobsRequest(page_size=1, page_token=first.next_page_token)
    code, _ = failure(partial(stub.ListJobs, stolen, metadata=as_user("bob")))
    assert code == Code.INVALID_ARGUMENT  # alice's page token is not bob's


def test_a_signed_page_token_with_a_malformed_position_is_invalid_argument(
    stub: jobs_pb2_grpc.JobServiceStub, alice_job: jobs_pb2.Job
) -> None:
    """Signed with the real PAGE_TOKEN_SECRET (as a leaked secret, or a signing bug, would
    allow): what it carries is still checked, and never answered INTERNAL."""
    signer, alice = PageTokens(PAGE_SECRET.encode()), as_user("alice")
    when = "2026-01-01T00:00:00+00:00"

    def list_jobs(position: dict[str, object]) -> jobs_pb2.ListJobsResponse:
        page_token = signer.encode("jobs:alice:*", position)
        request = jobs_pb2.ListJobsRequest(page_size=1, page_token=page_token)
        return stub.ListJobs(request, metadata=alice, timeout=t.RPC_TIMEOUT)

    def list_leads(position: dict[str, object]) -> jobs_pb2.ListLeadsResponse:
        page_token = signer.encode(f"leads:alice:{alice_job.id}", position)
        request = jobs_pb2.ListLeadsRequest(job_id=alice_job.id, page_token=page_token)
        return stub.ListLeads(request, metadata=alice, timeout=t.RPC_TIMEOUT)

    assert list_jobs({"c": when, "i": t.UNKNOWN_JOB}) is not None  # the signer is the real one
    assert list_leads({"r": 0}) is not None
    jobs_positions: list[dict[str, object]] = [
        {},
        {"c": "yesterday", "i": t.UNKNOWN_JOB},
        {"c": 5, "i": t.UNKNOWN_JOB},
        {"c": None, "i": None},
        {"c": "2026-01-01T00:00:00", "i": t.UNKNOWN_JOB},  # no time zone
        {"c": "0001-01-01T00:00:00+05:00", "i": t.UNKNOWN_JOB},  # before the first UTC time
        {"c": when, "i": ["job_"]},
        {"c": when, "i": "x' OR '1'='1"},
    ]
    for position in jobs_positions:
        code, details = failure(partial(list_jobs, position))
        assert code == Code.INVALID_ARGUMENT and details.startswith("page_token: "), position
    ranks: list[object] = ["first", None, [0], 1.5, 2**40]
    leads_positions: list[dict[str, object]] = [{}, *({"r": rank} for rank in ranks)]
    for position in leads_positions:
        code, details = failure(partial(list_leads, position))
        assert code == Code.INVALID_ARGUMENT and details.startswith("page_token: "), position


@pytest.mark.parametrize("rpc", JOB_RPCS)
def test_job_ids_are_matched_whole(
    stub: jobs_pb2_grpc.JobServiceStub, alice_job: jobs_pb2.Job, rpc: str
) -> None:
    for suffix in ("\n", "\r\n", "\n\n"):
        job_id = alice_job.id + suffix
        code, details = failure(partial(invoke, stub, rpc, as_user("alice"), job_id))
        assert code == Code.INVALID_ARGUMENT and details.startswith("job_id: "), repr(suffix)


def test_idempotency_keys_are_per_user(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    key = f"nightly-{secrets.token_hex(4)}"
    alices = submit(stub, as_user("alice"), idempotency_key=key)
    bobs = submit(stub, as_user("bob"), idempotency_key=key)
    assert alices != bobs
    assert submit(stub, as_user("alice"), idempotency_key=key) == alices
    assert submit(stub, as_user("bob"), idempotency_key=key) == bobs
    for user, job_id in (("alice", alices), ("bob", bobs)):
        job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=as_user(user))
        assert job.user_id == user


# -- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS)
def test_every_rpc_needs_a_bearer_token(stub: jobs_pb2_grpc.JobServiceStub, rpc: str) -> None:
    for md in (None, [("authorization", "Basic YWxpY2U6cHc=")], [("x-token", token("alice"))]):
        got = failure(partial(invoke, stub, rpc, md))
        assert got == (Code.UNAUTHENTICATED, "missing bearer token"), md


def bad_tokens(rsa_private: bytes) -> dict[str, str]:
    now, good = int(time.time()), token("alice")
    claims = t.claims("alice", issuer=ISSUER, audience=AUDIENCE)  # all right but the signature
    return {
        "forged": token("alice", key=secrets.token_urlsafe(32)),
        "tampered-sub": t.tampered(good, sub="bob"),
        "tampered-role": t.tampered(good, role="service"),
        "expired": token("alice", exp=now - 3600, iat=now - 7200),
        "not-yet-valid": token("alice", nbf=now + 3600),
        "wrong-audience": token("alice", aud="another-api"),
        "wrong-issuer": token("alice", iss="https://evil.example"),
        "no-exp": token("alice", exp=None),
        # AUTH_JWT_MAX_LIFETIME_S, 24 h by default: no token that outlives it
        "exp-two-days-ahead": token("alice", exp=now + 2 * 86400),
        "exp-a-year-ahead": token("alice", exp=now + 365 * 86400),
        "issued-for-over-a-day": token("alice", iat=now - 86400, exp=now + 3600),
        "numeric-string-exp": token("alice", exp=str(now + 3600)),
        "alg-none": t.alg_none(claims),
        "rs256-on-hs-server": t.rs256(rsa_private, claims),
        "hs-signed-with-nothing": t.hand_signed({"alg": "HS256"}, claims, b""),
        "garbage": "not-a-jwt",
    }


@pytest.mark.parametrize("rpc", RPCS)
def test_bad_tokens_are_unauthenticated_without_detail(
    stub: jobs_pb2_grpc.JobServiceStub, rsa_keys: tuple[bytes, bytes, Path], rpc: str
) -> None:
    for name, bad in bad_tokens(rsa_keys[0]).items():
        got = failure(partial(invoke, stub, rpc, t.bearer(bad)))
        assert got == (Code.UNAUTHENTICATED, "invalid token"), name


@pytest.mark.parametrize("rpc", RPCS)
def test_rs256_replica_refuses_hs_rs_confusion(
    rs_stub: jobs_pb2_grpc.JobServiceStub, rsa_keys: tuple[bytes, bytes, Path], rpc: str
) -> None:
    private, public, _ = rsa_keys
    payload = t.claims("alice", issuer=ISSUER, audience=AUDIENCE)
    for bad in (t.hs_rs_confusion(public, payload), token("alice"), t.alg_none(payload)):
        got = failure(partial(invoke, rs_stub, rpc, t.bearer(bad)))
        assert got == (Code.UNAUTHENTICATED, "invalid token")
    if rpc in ("ListJobs", "GetJob"):  # the real key works, on the same database
        job_id = submit(rs_stub, t.bearer(t.rs256(private, payload)))
        assert invoke(rs_stub, rpc, t.bearer(t.rs256(private, payload)), job_id)


def test_health_and_reflection_need_no_token(secured: Stack) -> None:
    with grpc.insecure_channel(secured.jobs_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "prospect.v1.JobService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = reflection.ServerReflectionInfo(iter([request]), timeout=10)
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "prospect.v1.JobService" in names


# -- service tokens -----------------------------------------------------------------------


def test_service_token_submits_on_behalf_of_a_user_and_nothing_more(
    stub: jobs_pb2_grpc.JobServiceStub, alice_job: jobs_pb2.Job
) -> None:
    job_id = submit(stub, SERVICE, on_behalf_of="alice")
    job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=as_user("alice"))
    assert job.user_id == "alice"
    assert job_id in job_ids(stub, as_user("alice"))
    for rpc in ("GetJob", "ListJobs", "WatchJob", "CancelJob", "ListLeads"):
        for target in (job_id, alice_job.id):
            code, _ = failure(partial(invoke, stub, rpc, SERVICE, target))
            assert code == Code.PERMISSION_DENIED, rpc
    code, details = failure(lambda: submit(stub, SERVICE))  # without on_behalf_of
    assert code == Code.INVALID_ARGUMENT and details.startswith("on_behalf_of")


def test_users_cannot_submit_for_someone_else(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    before = job_ids(stub, as_user("bob"))
    code, _ = failure(lambda: submit(stub, as_user("alice"), on_behalf_of="bob"))
    assert code == Code.PERMISSION_DENIED
    assert job_ids(stub, as_user("bob")) == before
    own = submit(stub, as_user("alice"), on_behalf_of="alice")  # naming oneself is harmless
    assert own in job_ids(stub, as_user("alice"))


# -- limits -------------------------------------------------------------------------------

LIMITED_ENV = AUTH_ENV | {"SANDBOX_LATENCY_MS": "5000", "SHUTDOWN_GRACE_S": "2"}
LIMITED_ENV |= {"MAX_ACTIVE_JOBS_PER_USER": "3", "MAX_WATCHES_PER_USER": "2"}
UNFINISHED = {jobs_pb2.JOB_STATUS_PENDING, jobs_pb2.JOB_STATUS_PROCESSING}
SUBMIT_AND_WATCH = ("submit", "bakery", "Springfield 9", "--max-results", "4", "--watch")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    """Slow sandbox calls (5 s each), so jobs stay unfinished while a test runs."""
    running = Stack(tmp_path_factory.mktemp("limited"), env=LIMITED_ENV)
    try:
        running.start()
        with grpc.insecure_channel(running.jobs_addr) as channel:
            yield jobs_pb2_grpc.JobServiceStub(channel)
    finally:
        running.stop()


def test_active_jobs_per_user_are_limited(limited: jobs_pb2_grpc.JobServiceStub) -> None:
    carol, dave = as_user("carol"), as_user("dave")
    try:
        jobs = [submit(limited, carol, idempotency_key="first")]
        jobs += [submit(limited, carol) for _ in range(2)]
        for job_id in jobs:
            got = limited.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=carol)
            assert got.status in UNFINISHED, "jobs finished too fast for this test"
        code, details = failure(partial(submit, limited, carol))
        assert code == Code.RESOURCE_EXHAUSTED and "at most 3" in details
        code, _ = failure(partial(submit, limited, SERVICE, on_behalf_of="carol"))
        assert code == Code.RESOURCE_EXHAUSTED  # the owner's limit, not the caller's
        assert submit(limited, carol, idempotency_key="first") == jobs[0]  # a resubmit is fine
        assert submit(limited, dave)  # other users are unaffected
        limited.CancelJob(jobs_pb2.CancelJobRequest(job_id=jobs[1]), metadata=carol)
        jobs.append(submit(limited, carol))  # the cancelled job freed its slot
        assert failure(partial(submit, limited, carol))[0] == Code.RESOURCE_EXHAUSTED
        assert len(job_ids(limited, carol)) == 4
    finally:
        t.cancel_all(limited, carol)
        t.cancel_all(limited, dave)


def test_watch_streams_per_user_are_limited(limited: jobs_pb2_grpc.JobServiceStub) -> None:
    erin, frank = as_user("erin"), as_user("frank")
    streams = []

    def watch(md: Metadata, job_id: str) -> jobs_pb2.JobUpdate:
        stream = limited.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), metadata=md, timeout=60)
        streams.append(stream)
        return next(stream)  # the first snapshot: the stream is open on the server

    try:
        erins, franks = submit(limited, erin), submit(limited, frank)
        assert watch(erin, erins).job.id == erins and watch(erin, erins).job.id == erins
        code, details = failure(partial(watch, erin, erins))
        assert code == Code.RESOURCE_EXHAUSTED and "MAX_WATCHES_PER_USER" in details
        assert watch(frank, franks) and watch(frank, franks)  # per user
        streams[0].cancel()
        deadline = time.monotonic() + 10  # the server notices the cancel within moments
        while True:
            try:
                assert watch(erin, erins).job.id == erins
                break
            except grpc.RpcError as err:
                assert err.code() == Code.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "a closed watch still counts"
                time.sleep(0.1)
    finally:
        for stream in streams:
            stream.cancel()
        t.cancel_all(limited, erin)
        t.cancel_all(limited, frank)


# -- transport ----------------------------------------------------------------------------


def test_tls_serves_the_cli_and_refuses_plaintext(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    cert, key = t.self_signed_cert(tmp_path)
    other_ca, _ = t.self_signed_cert(tmp_path / "ca")
    env = {"AUTH_MODE": "none", "SANDBOX_LATENCY_MS": "5"}
    env |= {"GRPC_TLS_CERT": str(cert), "GRPC_TLS_KEY": str(key)}
    with Stack(tmp_path / "stack", env=env) as running:
        addr = running.jobs_addr
        proc = run_cli("--addr", addr, "--tls-ca", str(cert), *SUBMIT_AND_WATCH)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "COMPLETED" in proc.stdout
        trusted = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(addr, trusted) as channel:
            assert t.health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        untrusted = grpc.ssl_channel_credentials(other_ca.read_bytes())
        for channel in (grpc.insecure_channel(addr), grpc.secure_channel(addr, untrusted)):
            with channel:
                assert failure(partial(t.health_status, channel))[0] == Code.UNAVAILABLE
        proc = run_cli("--addr", addr, "list")  # the CLI without --tls-ca
        assert proc.returncode == 2 and "UNAVAILABLE" in proc.stderr, proc.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_none_mode_refuses_a_non_loopback_bind(
    nats_server: NatsServer, tmp_path: Path, host: str
) -> None:
    env = {**nats_server.client_env("jobs"), "DATA_DIR": str(tmp_path), "AUTH_MODE": "none"}
    env |= {"JOBS_GRPC_ADDR": f"{host}:{free_port()}", "AUTH_JWT_SECRET": ""}
    proc = ServiceProcess("jobs", env, tmp_path / "jobs.log")
    try:
        proc.start()
        deadline = time.monotonic() + 60
        while proc.is_running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode not in (None, 0), proc.log_tail()
        log = proc.log_text()
        assert f"JOBS_GRPC_ADDR={host}:" in log and "AUTH_MODE" in log, log
    finally:
        proc.stop()


# -- secrets ------------------------------------------------------------------------------

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
