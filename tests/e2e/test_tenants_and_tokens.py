"""End to end, against one stack with AUTH_MODE=jwt (HS256) and a second jobs replica
verifying RS256: tenants never see each other (another user's job is exactly as not found
as an unknown one; lists, page tokens and idempotency keys are per user), every RPC needs
a valid bearer token (forged, expired, alg none, HS/RS confusion... refused without
detail; health and reflection need none), and a service token only submits on a user's
behalf. The tests share the stack: they stay in one module so that it starts once."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack, free_port
from services.jobs.page_tokens import PageTokens
from tests.e2e import tokens as t
from tests.e2e.secured_stack import (
    AUDIENCE,
    AUTH_ENV,
    ISSUER,
    PAGE_SECRET,
    SERVICE,
    as_user,
    token,
)
from tests.e2e.tokens import RPCS, failure, invoke, job_ids, submit

pytestmark = pytest.mark.e2e

JOB_RPCS = ("GetJob", "WatchJob", "CancelJob", "ListLeads")  # those naming a job
Code = grpc.StatusCode


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
