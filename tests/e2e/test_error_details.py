"""End to end, against a real stack: every error the jobs API answers carries
``google.rpc.Status`` details in the ``grpc-status-details-bin`` trailer (the gRPC richer
error model), decoded here as any client would, with ``rpc_status.from_call``.

Each reason of ``services.common.errors.Reason`` the service can be driven to is provoked
once: ErrorInfo (domain ``prospect``, the reason, its metadata) always; BadRequest with the
field's path on INVALID_ARGUMENT; QuotaFailure on RESOURCE_EXHAUSTED; RetryInfo where time
alone makes a retry succeed. The message (the status details string) is unchanged.
INTERNAL cannot be provoked from outside; tests/unit/test_error_status.py covers it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import ServiceProcess, Stack
from tests.e2e import tokens as t
from tests.e2e.tokens import Metadata, first_update, submit

pytestmark = pytest.mark.e2e

SECRET = secrets.token_urlsafe(32)
ENV = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET, "PAGE_TOKEN_SECRET": secrets.token_hex(32)}
# Slow sandbox calls keep jobs unfinished while a test runs; every limit is tiny.
ENV |= {"SANDBOX_LATENCY_MS": "3000", "SHUTDOWN_GRACE_S": "2"}
ENV |= {"MAX_ACTIVE_JOBS_PER_USER": "1", "MAX_WATCHES_PER_USER": "1"}
ENV |= {"MAX_USERS_PER_PRINCIPAL_PER_MINUTE": "1"}
# A burst of 10 rows refilled at 0.01 a second: a listing after one row waits ~100 s.
ENV |= {"LIST_ROWS_PER_USER_PER_S": "0.01", "LIST_ROWS_PER_USER_BURST": "10"}
Code = grpc.StatusCode
ErrorInfo = error_details_pb2.ErrorInfo
BadRequest = error_details_pb2.BadRequest
QuotaFailure = error_details_pb2.QuotaFailure
RetryInfo = error_details_pb2.RetryInfo
KINDS = (ErrorInfo, BadRequest, QuotaFailure, RetryInfo)


def as_user(user: str, role: str | None = None) -> Metadata:
    return t.bearer(t.hs256(SECRET, t.claims(user, role=role)))


def fresh(name: str) -> str:
    """A user of this test alone (limits are per user)."""
    return f"{name}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("error-details"), env=ENV)
    try:
        running.start()
        yield running
    except BaseException:
        print(f"\n===== logs of the stack =====\n{running.log_tails(60)}")
        raise
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stub(stack: Stack) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(stack.jobs_addr) as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


class Refusal:
    """A failed call as a client sees it: code, message, and the decoded details."""

    def __init__(self, err: grpc.RpcError) -> None:
        self.code: grpc.StatusCode = err.code()
        self.message: str = err.details() or ""
        # from_call also checks the Status's code and message equal the call's own.
        status: status_pb2.Status | None = rpc_status.from_call(err)
        assert status is not None, f"no grpc-status-details-bin trailer: {err}"
        self.details: dict[type[Message], Any] = {}  # each kind of detail, unpacked
        for packed in status.details:
            kind = next(k for k in KINDS if packed.Is(k.DESCRIPTOR))
            assert kind not in self.details, f"two {kind.__name__}"
            detail = kind()
            packed.Unpack(detail)
            self.details[kind] = detail

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        info = self.details[ErrorInfo]
        assert info.domain == "prospect", info
        return info

    @property
    def kinds(self) -> set[type[Message]]:
        return set(self.details)

    def field_violations(self) -> list[tuple[str, str]]:
        return [(v.field, v.description) for v in self.details[BadRequest].field_violations]

    def quota(self) -> list[tuple[str, str]]:
        return [(v.subject, v.description) for v in self.details[QuotaFailure].violations]

    def retry_delay_s(self) -> float:
        delay = self.details[RetryInfo].retry_delay
        return float(delay.seconds + delay.nanos / 1e9)


def refused(call: Callable[[], object]) -> Refusal:
    try:
        result = call()
    except grpc.RpcError as err:
        return Refusal(err)
    raise AssertionError(f"expected an error, got {result!r}")


def get_job(stub: jobs_pb2_grpc.JobServiceStub, md: Metadata | None, job_id: str) -> object:
    return stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=md, timeout=10)


def watch(
    stub: jobs_pb2_grpc.JobServiceStub, md: Metadata | None, job_id: str, after: int = 0
) -> object:
    request = jobs_pb2.WatchJobRequest(job_id=job_id, after_version=after)
    return first_update(stub, request, md)


def submit_config(
    stub: jobs_pb2_grpc.JobServiceStub, md: Metadata, config: jobs_pb2.CampaignConfig, **kw: str
) -> str:
    request = jobs_pb2.SubmitCampaignRequest(config=config)
    for name, value in kw.items():  # string fields only
        setattr(request, name, value)
    return str(stub.SubmitCampaign(request, metadata=md, timeout=10).job_id)


# -- INVALID_ARGUMENT ---------------------------------------------------------------------


def test_a_bad_field_is_invalid_field_with_a_bad_request_naming_its_path(
    stub: jobs_pb2_grpc.JobServiceStub,
) -> None:
    md, service = as_user(fresh("ivy")), as_user("scheduler-ivy", "service")
    cases: dict[str, tuple[Callable[[], object], str, str]] = {
        "config.max_results": (
            partial(submit_config, stub, md, t.config(max_results=0)),
            "config.max_results",
            "must be between 1 and 100",
        ),
        "config.location": (
            partial(submit_config, stub, md, t.config(location="  ")),
            "config.location",
            "is required",
        ),
        "job_id": (
            partial(get_job, stub, md, "job_42"),
            "job_id",
            "must look like job_ followed by 32 hex digits",
        ),
        "page_token": (
            partial(stub.ListJobs, jobs_pb2.ListJobsRequest(page_token="forged"), metadata=md),
            "page_token",
            "is not a token this listing returned",
        ),
        "after_version (a stream)": (
            partial(watch, stub, md, t.UNKNOWN_JOB, -1),
            "after_version",
            "must not be negative",
        ),
        "on_behalf_of (a service token)": (
            partial(submit, stub, service),
            "on_behalf_of",
            "is required for service tokens",
        ),
    }
    for case, (call, field, rule) in cases.items():
        got = refused(call)
        assert got.code == Code.INVALID_ARGUMENT, case
        assert got.message == f"{field}: {rule}", case  # the message as before
        assert got.kinds == {ErrorInfo, BadRequest}, case
        assert got.info.reason == "INVALID_FIELD" and dict(got.info.metadata) == {"field": field}
        assert got.field_violations() == [(field, rule)], case


def test_a_body_that_is_not_the_request_message_is_malformed_request(stack: Stack) -> None:
    with grpc.insecure_channel(stack.jobs_addr) as channel:
        raw = channel.unary_unary("/prospect.v1.JobService/GetJob")  # bytes in, bytes out
        got = refused(partial(raw, b"\xff\xff\xff", metadata=as_user("mal"), timeout=10))
    assert (got.code, got.message) == (Code.INVALID_ARGUMENT, "request: not a valid message")
    assert got.kinds == {ErrorInfo} and got.info.reason == "MALFORMED_REQUEST"


# -- UNAUTHENTICATED and PERMISSION_DENIED (the interceptor, and the handlers) -----------


@pytest.mark.parametrize("rpc", ["GetJob", "WatchJob"])
def test_missing_and_invalid_tokens_have_their_own_reasons(
    stub: jobs_pb2_grpc.JobServiceStub, rpc: str
) -> None:
    forged = t.bearer(t.hs256(secrets.token_urlsafe(32), t.claims("alice")))
    for md, message, reason in (
        (None, "missing bearer token", "UNAUTHENTICATED"),
        ([("authorization", "Basic YWxpY2U6cHc=")], "missing bearer token", "UNAUTHENTICATED"),
        (forged, "invalid token", "INVALID_TOKEN"),
        (t.bearer("not-a-jwt"), "invalid token", "INVALID_TOKEN"),
    ):
        got = refused(partial(t.invoke, stub, rpc, md))
        assert (got.code, got.message) == (Code.UNAUTHENTICATED, message)
        assert got.kinds == {ErrorInfo}
        assert got.info.reason == reason and not got.info.metadata  # nothing about the token


def test_a_service_token_reading_and_a_user_acting_for_another_are_permission_denied(
    stub: jobs_pb2_grpc.JobServiceStub,
) -> None:
    service = as_user("scheduler-pd", "service")
    for call, message in (
        (
            partial(get_job, stub, service, t.UNKNOWN_JOB),
            "service tokens may only submit campaigns",
        ),
        (partial(watch, stub, service, t.UNKNOWN_JOB), "service tokens may only submit campaigns"),
        (
            partial(submit, stub, as_user(fresh("pat")), on_behalf_of="someone-else"),
            "on_behalf_of is for service tokens only",
        ),
    ):
        got = refused(call)
        assert (got.code, got.message) == (Code.PERMISSION_DENIED, message)
        assert got.kinds == {ErrorInfo} and got.info.reason == "PERMISSION_DENIED"


# -- NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION ---------------------------------------


def test_an_unknown_job_is_job_not_found(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    md = as_user(fresh("nora"))
    for call in (
        partial(get_job, stub, md, t.UNKNOWN_JOB),
        partial(watch, stub, md, t.UNKNOWN_JOB),  # a stream's error, before any update
        partial(stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=t.UNKNOWN_JOB), metadata=md),
    ):
        got = refused(call)
        assert (got.code, got.message) == (Code.NOT_FOUND, f"job {t.UNKNOWN_JOB} not found")
        assert got.kinds == {ErrorInfo} and got.info.reason == "JOB_NOT_FOUND"


def test_a_key_reused_with_another_config_is_idempotency_key_reused(
    stub: jobs_pb2_grpc.JobServiceStub,
) -> None:
    md, key = as_user(fresh("ida")), f"nightly-{secrets.token_hex(4)}"
    first = submit_config(stub, md, t.config(location="Keyport, ME"), idempotency_key=key)
    other = t.config(location="Elsewhere, ME")
    got = refused(partial(submit_config, stub, md, other, idempotency_key=key))
    assert got.code == Code.ALREADY_EXISTS
    assert got.message == (
        f"idempotency_key {key!r} was used for job {first} with a different config; use a new key"
    )
    assert got.kinds == {ErrorInfo} and got.info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert dict(got.info.metadata) == {"idempotency_key": key, "job_id": first}


def test_cancelling_a_finished_job_is_job_not_cancellable(
    stub: jobs_pb2_grpc.JobServiceStub,
) -> None:
    md = as_user(fresh("cass"))
    job_id = submit(stub, md)
    stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=md, timeout=10)
    assert t.watch_to_end(stub, job_id, md).status == jobs_pb2.JOB_STATUS_CANCELLED
    cancel = jobs_pb2.CancelJobRequest(job_id=job_id)
    got = refused(partial(stub.CancelJob, cancel, metadata=md, timeout=10))
    assert got.code == Code.FAILED_PRECONDITION
    assert got.message == (
        f"job {job_id} is CANCELLED; only pending, processing or cancelling jobs can be cancelled"
    )
    assert got.kinds == {ErrorInfo} and got.info.reason == "JOB_NOT_CANCELLABLE"
    assert dict(got.info.metadata) == {"job_id": job_id, "status": "CANCELLED"}


# -- RESOURCE_EXHAUSTED -------------------------------------------------------------------


def test_the_active_job_limit_names_the_owner_and_the_setting(
    stub: jobs_pb2_grpc.JobServiceStub,
) -> None:
    user = fresh("ada")
    md = as_user(user)
    job_id = submit(stub, md)
    try:
        job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=md, timeout=10)
        assert job.status not in t.TERMINAL, "the job finished too fast for this test"
        for caller, kw in ((md, {}), (as_user("scheduler-ada", "service"), {"on_behalf_of": user})):
            got = refused(partial(submit, stub, caller, **kw))
            assert got.code == Code.RESOURCE_EXHAUSTED
            assert got.message == "1 unfinished jobs: at most 1 at once (MAX_ACTIVE_JOBS_PER_USER)"
            # No RetryInfo: waiting alone frees nothing; a job finishing does.
            assert got.kinds == {ErrorInfo, QuotaFailure}
            assert got.info.reason == "ACTIVE_JOB_LIMIT"
            assert dict(got.info.metadata) == {"setting": "MAX_ACTIVE_JOBS_PER_USER", "limit": "1"}
            # The owner's limit, whoever submits.
            assert got.quota() == [
                (f"user:{user}", "at most 1 unfinished jobs per user (MAX_ACTIVE_JOBS_PER_USER)")
            ]
    finally:
        stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=md, timeout=10)


def test_the_watch_limit_on_a_stream(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    user = fresh("wes")
    md = as_user(user)
    job_id = submit(stub, md)
    request = jobs_pb2.WatchJobRequest(job_id=job_id)
    open_watch = stub.WatchJob(request, metadata=md, timeout=60)
    try:
        assert next(open_watch).job.id == job_id  # open on the server
        got = refused(partial(watch, stub, md, job_id))
        assert got.code == Code.RESOURCE_EXHAUSTED
        assert got.message == "too many open watch streams (1, MAX_WATCHES_PER_USER)"
        assert got.kinds == {ErrorInfo, QuotaFailure}  # a stream closing frees it, not time
        assert got.info.reason == "WATCH_LIMIT"
        assert dict(got.info.metadata) == {"setting": "MAX_WATCHES_PER_USER", "limit": "1"}
        assert got.quota() == [
            (f"user:{user}", "at most 1 open watch streams per user (MAX_WATCHES_PER_USER)")
        ]
    finally:
        open_watch.cancel()
        stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=md, timeout=10)


def test_the_list_rate_limit_says_when_to_retry(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    user = fresh("lis")
    md = as_user(user)
    job_id = submit(stub, md)
    try:
        listing = jobs_pb2.ListJobsRequest()  # 50 rows asked: the whole burst of 10 held
        assert len(stub.ListJobs(listing, metadata=md, timeout=10).jobs) == 1  # 9 rows left
        got = refused(partial(stub.ListJobs, listing, metadata=md, timeout=10))
        assert got.code == Code.RESOURCE_EXHAUSTED
        assert "LIST_ROWS_PER_USER_PER_S" in got.message
        assert got.kinds == {ErrorInfo, QuotaFailure, RetryInfo}
        assert got.info.reason == "LIST_RATE_LIMIT"
        assert dict(got.info.metadata) == {
            "setting": "LIST_ROWS_PER_USER_PER_S", "limit": "0.01", "burst": "10",
        }  # fmt: skip
        ((subject, description),) = got.quota()
        assert subject == f"user:{user}"
        assert (
            "LIST_ROWS_PER_USER_PER_S" in description and "LIST_ROWS_PER_USER_BURST" in description
        )
        # One row short of 10, refilled at 0.01 a second: about 100 s (less what has refilled).
        assert 90 < got.retry_delay_s() <= 100, got.retry_delay_s()
    finally:
        stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=md, timeout=10)


def test_the_principal_user_limit_says_when_to_retry(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    principal = fresh("scheduler")
    service = as_user(principal, "service")
    first_owner = fresh("u1")
    job_id = submit(stub, service, on_behalf_of=first_owner)
    before = time.monotonic()
    try:
        got = refused(partial(submit, stub, service, on_behalf_of=fresh("u2")))
        assert got.code == Code.RESOURCE_EXHAUSTED
        assert "MAX_USERS_PER_PRINCIPAL_PER_MINUTE" in got.message
        assert got.kinds == {ErrorInfo, QuotaFailure, RetryInfo}
        assert got.info.reason == "PRINCIPAL_USER_LIMIT"
        assert dict(got.info.metadata) == {
            "setting": "MAX_USERS_PER_PRINCIPAL_PER_MINUTE", "limit": "1",
        }  # fmt: skip
        ((subject, description),) = got.quota()
        assert subject == f"principal:{principal}"
        assert "MAX_USERS_PER_PRINCIPAL_PER_MINUTE" in description
        # The first owner ages out of the minute's window: under 60 s from now.
        assert 60 - (time.monotonic() - before) - 5 < got.retry_delay_s() <= 60
    finally:
        cancel = jobs_pb2.CancelJobRequest(job_id=job_id)
        stub.CancelJob(cancel, metadata=as_user(first_owner), timeout=10)


# -- UNAVAILABLE --------------------------------------------------------------------------


def test_a_watch_ended_by_shutdown_says_where_to_resume_and_when(stack: Stack) -> None:
    replica: ServiceProcess = stack.start_jobs_replica()
    md = as_user(fresh("una"))
    with grpc.insecure_channel(replica.grpc_addr or "") as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job_id = submit(stub, md)
        stream = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), metadata=md, timeout=60)
        try:
            seen = [next(stream)]
            replica.terminate()  # SIGTERM: the replica ends its open watches UNAVAILABLE
            got = refused(lambda: seen.extend(stream))
        finally:
            stream.cancel()
            replica.stop()
    last = seen[-1].job.version
    assert got.code == Code.UNAVAILABLE
    assert got.message == f"jobs service shutting down; watch again with after_version={last}"
    assert got.kinds == {ErrorInfo, RetryInfo}
    assert got.info.reason == "UNAVAILABLE"
    assert dict(got.info.metadata) == {"job_id": job_id, "after_version": str(last)}
    assert 0 < got.retry_delay_s() <= 1
    with grpc.insecure_channel(stack.jobs_addr) as channel:  # the job goes on elsewhere
        other = jobs_pb2_grpc.JobServiceStub(channel)
        other.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=md, timeout=10)
