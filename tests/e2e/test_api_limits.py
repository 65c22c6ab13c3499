"""End to end, against a real stack with small limits: how many users one service token may
act for in a minute, and how many rows one user's listings may take (both per jobs replica,
RESOURCE_EXHAUSTED naming the setting; other callers are unaffected)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from functools import partial

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.e2e import tokens as t
from tests.e2e.tokens import Metadata, failure, submit

pytestmark = pytest.mark.e2e

SECRET = secrets.token_urlsafe(32)
ENV = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET, "PAGE_TOKEN_SECRET": secrets.token_hex(32)}
ENV |= {"SANDBOX_LATENCY_MS": "5", "MAX_USERS_PER_PRINCIPAL_PER_MINUTE": "3"}
# A burst of 10 rows that barely refills (one row per 1000 s): each row listed counts.
ENV |= {"LIST_ROWS_PER_USER_PER_S": "0.001", "LIST_ROWS_PER_USER_BURST": "10"}
Code = grpc.StatusCode


def as_user(user: str, role: str | None = None) -> Metadata:
    return t.bearer(t.hs256(SECRET, t.claims(user, role=role)))


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    running = Stack(tmp_path_factory.mktemp("limits"), env=ENV)
    try:
        running.start()
        with grpc.insecure_channel(running.jobs_addr) as channel:
            yield jobs_pb2_grpc.JobServiceStub(channel)
    finally:
        running.stop()


def test_a_service_token_acts_for_a_limited_number_of_users_per_minute(
    stub: jobs_pb2_grpc.JobServiceStub,
) -> None:
    scheduler, other = as_user("scheduler", "service"), as_user("importer", "service")
    for user in ("u1", "u2", "u3"):
        submit(stub, scheduler, on_behalf_of=user)
    code, details = failure(partial(submit, stub, scheduler, on_behalf_of="u4"))
    assert code == Code.RESOURCE_EXHAUSTED, details
    assert "MAX_USERS_PER_PRINCIPAL_PER_MINUTE" in details and "u1" not in details
    job_id = submit(stub, scheduler, on_behalf_of="u1")  # one of its three: still fine
    assert submit(stub, other, on_behalf_of="u4")  # the limit is per service token
    assert submit(stub, as_user("u4"))  # and users submitting themselves are not counted
    got = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=as_user("u1"))
    assert got.user_id == "u1"


def list_jobs(
    stub: jobs_pb2_grpc.JobServiceStub, md: Metadata, page_size: int
) -> jobs_pb2.ListJobsResponse:
    request = jobs_pb2.ListJobsRequest(page_size=page_size)
    return stub.ListJobs(request, metadata=md, timeout=t.RPC_TIMEOUT)


def test_rows_listed_per_user_are_limited(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    lister, other = as_user("lister"), as_user("bystander")
    job_ids = [submit(stub, lister) for _ in range(4)]
    submit(stub, other)
    assert len(list_jobs(stub, lister, 4).jobs) == 4  # 10 - 4: 6 rows left
    assert len(list_jobs(stub, lister, 4).jobs) == 4  # 2 left
    code, details = failure(partial(list_jobs, stub, lister, 4))
    assert code == Code.RESOURCE_EXHAUSTED, details
    assert "LIST_ROWS_PER_USER_PER_S" in details
    assert len(list_jobs(stub, other, 4).jobs) == 1  # another user's listing is unaffected
    assert len(list_jobs(stub, lister, 2).jobs) == 2  # a page the bucket still holds
    # ListLeads draws on the same bucket, now empty.
    request = jobs_pb2.ListLeadsRequest(job_id=job_ids[0], page_size=1)
    code, _ = failure(partial(stub.ListLeads, request, metadata=lister, timeout=t.RPC_TIMEOUT))
    assert code == Code.RESOURCE_EXHAUSTED
    # The other RPCs are not limited by it.
    job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_ids[0]), metadata=lister)
    assert job.id == job_ids[0]
