"""End to end, a stack behind an identity provider (AUTH_JWKS_URL to a fake one served on
loopback): its RS256 and ES256 tokens work on the gRPC API and, passed through, on the
HTTP API; users stay apart; a token signed with a key the provider never published is
refused on both. Rotation and the refetch limit are in tests/integration/test_jwks.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import httpx
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.e2e import tokens as t
from tests.fakes.identity_provider import FakeIdentityProvider, new_key

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    with FakeIdentityProvider("RS256", "ES256") as provider:
        yield provider


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdentityProvider) -> Iterator[Stack]:
    env = {
        "AUTH_MODE": "jwt",
        "AUTH_JWKS_URL": idp.jwks_url,
        "PAGE_TOKEN_SECRET": secrets.token_hex(32),
        "SANDBOX_LATENCY_MS": "5",
    }
    running = Stack(tmp_path_factory.mktemp("idp"), env=env)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stub(stack: Stack) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(stack.jobs_addr) as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


def test_provider_tokens_work_on_both_apis_and_keep_users_apart(
    idp: FakeIdentityProvider, stack: Stack, stub: jobs_pb2_grpc.JobServiceStub
) -> None:
    rs, es = idp.keys
    alice, bob = t.bearer(idp.token("alice", es)), t.bearer(idp.token("bob", rs))
    job_id = t.submit(stub, alice)
    got = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=alice, timeout=15)
    assert got.id == job_id
    code, _ = t.failure(
        lambda: stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=bob, timeout=15)
    )
    assert code == grpc.StatusCode.NOT_FOUND

    with httpx.Client(base_url=stack.web_url, timeout=30) as http:
        as_alice = {"Authorization": f"Bearer {idp.token('alice', rs)}"}
        as_bob = {"Authorization": f"Bearer {idp.token('bob', es)}"}
        assert http.get(f"/v1/jobs/{job_id}", headers=as_alice).json()["id"] == job_id
        assert http.get(f"/v1/jobs/{job_id}", headers=as_bob).status_code == 404
        listed = http.get("/v1/jobs", headers=as_bob)
        assert listed.status_code == 200
        assert job_id not in {job["id"] for job in listed.json().get("jobs", [])}


def test_a_key_the_provider_never_published_is_refused(
    idp: FakeIdentityProvider, stack: Stack, stub: jobs_pb2_grpc.JobServiceStub
) -> None:
    impostor = new_key("ES256", kid=idp.keys[1].kid)  # a published kid, another key
    forged = idp.token("alice", impostor)
    code, details = t.failure(lambda: t.submit(stub, t.bearer(forged)))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    with httpx.Client(base_url=stack.web_url, timeout=30) as http:
        answer = http.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"})
        assert answer.status_code == 401
        assert answer.json()["error"]["message"] == "invalid token"
