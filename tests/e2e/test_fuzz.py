"""Property-based fuzzing of every RPC of a real stack in AUTH_MODE=jwt (hypothesis, sync
gRPC): random and malformed fields, garbage request bodies, hostile tokens and headers.
Every call must end OK or with a documented code, never INTERNAL or UNKNOWN, with no
internal detail; afterwards the service is healthy and a normal campaign completes."""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.e2e import tokens as t
from tests.e2e.tokens import RPC_TIMEOUT, TERMINAL, Metadata, submit, watch_to_end

pytestmark = pytest.mark.e2e

SECRET = secrets.token_urlsafe(32)
Code = grpc.StatusCode
ALLOWED = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.UNAUTHENTICATED,
    Code.PERMISSION_DENIED,
    Code.FAILED_PRECONDITION,
    Code.RESOURCE_EXHAUSTED,
    Code.ALREADY_EXISTS,  # an idempotency key the fuzzer reused with another config
}
# INVALID_ARGUMENT names the field and the rule.
FIELD = re.compile(
    r"^(config(\.\w+)?|idempotency_key|on_behalf_of|job_id|page_size|page_token|status"
    r"|after_version): \S"
)
LEAKY = ("Traceback", "Exception", "<class", "Error parsing", "sqlalchemy", 'File "')
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
METHODS = {name: f"/prospect.v1.JobService/{name}" for name in t.RPCS}


def user_md(user: str, **claims: object) -> Metadata:
    return t.bearer(t.hs256(SECRET, {**t.claims(user), **claims}))


MALLORY = user_md("mallory")
SERVICE = user_md("scheduler", role="service")


@dataclass
class Known:
    """Real ids and page tokens, for mutating; jobs the fuzzer created, to follow up."""

    job_ids: list[str]
    page_tokens: list[str]
    created: list[tuple[str, str]] = field(default_factory=list)  # (owner, job id)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "AUTH_MODE": "jwt",
        "AUTH_JWT_SECRET": SECRET,
        "PAGE_TOKEN_SECRET": secrets.token_hex(32),
        "SANDBOX_LATENCY_MS": "5",
        "SANDBOX_MAX_PLACES": "5",
        "LOG_LEVEL": "INFO",
    }
    running = Stack(tmp_path_factory.mktemp("fuzz"), env=env)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def channel(fuzzed: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzzed.jobs_addr) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> jobs_pb2_grpc.JobServiceStub:
    return jobs_pb2_grpc.JobServiceStub(channel)


@pytest.fixture(scope="module")
def known(stub: jobs_pb2_grpc.JobServiceStub) -> Known:
    ids = [watch_to_end(stub, submit(stub, MALLORY), MALLORY).id for _ in range(2)]
    page = stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=MALLORY)
    leads = stub.ListLeads(jobs_pb2.ListLeadsRequest(job_id=ids[0], page_size=1), metadata=MALLORY)
    return Known(ids, [page.next_page_token, leads.next_page_token])


# -- strategies ---------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=["Cs"])  # protobuf strings are valid UTF-8
CONTROL = st.characters(categories=["Cc", "Cf", "Zl", "Zp"])
HUGE = st.builds(
    lambda s, n: (s * n)[:10_240], st.text(ANY_CHAR, min_size=1, max_size=16), st.integers(1, 2_000)
)
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    st.text(CONTROL, min_size=1, max_size=5).map(lambda c: f"bakery{c}"),
    HUGE,
    st.sampled_from(["", " ", "bakery", "a" * 200, "a" * 201, "\x00", "\u202e", "\ufeff", " x "]),
)
SANE = st.sampled_from(["bakery", "coffee shop", "Seattle, WA"])
INT32 = st.integers(-(2**31), 2**31 - 1) | st.sampled_from(
    [-(2**31), 2**31 - 1, -1, 0, 1, 100, 101, 500, 501]
)
INT64 = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1, -1, 0, 1])
SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 10_000.0, 10_000.000001, 1e308, 5e-324, -1.0]
DOUBLE = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(SPECIAL)
CONFIG = st.builds(
    jobs_pb2.CampaignConfig,
    business_type=SANE | TEXT,
    location=SANE | TEXT,
    max_results=st.integers(1, 5) | INT32,
    min_confidence_score=st.integers(0, 100) | INT32,
    budget_limit=st.just(0.0) | DOUBLE,
    verify_emails=st.booleans(),
)
HEX = "0123456789abcdef"
HS256 = {"alg": "HS256", "typ": "JWT"}
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
B64 = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=300)


def mutated(values: list[str]) -> st.SearchStrategy[str]:
    """A real value with one character replaced, inserted or dropped, or cut short."""

    def mutate(value: str, at: int, char: str, how: int) -> str:
        at %= len(value) + 1
        return [
            value[:at] + char + value[at + 1 :],
            value[:at] + char + value[at:],
            value[:at] + value[at + 1 :],
            value[:at],
        ][how]

    return st.builds(
        mutate, st.sampled_from(values), st.integers(0, 400), ANY_CHAR, st.integers(0, 3)
    )


def job_ids(known: Known) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(known.job_ids),
        st.text(HEX, min_size=32, max_size=32).map(lambda h: f"job_{h}"),
        mutated(known.job_ids),
        TEXT,
    )


def page_tokens(known: Known) -> st.SearchStrategy[str]:
    forged = st.builds(
        lambda body, sig: base64.urlsafe_b64encode(json.dumps(body).encode()).decode() + "." + sig,
        st.fixed_dictionaries(
            {
                "s": st.text(max_size=40),
                "p": st.dictionaries(
                    st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=3
                ),
            }
        ),
        st.text(HEX, min_size=32, max_size=32),
    )
    return st.one_of(
        st.just(""),
        st.sampled_from(known.page_tokens),
        mutated(known.page_tokens),
        forged,
        B64,
        TEXT,
    )


def forged_tokens() -> st.SearchStrategy[str]:
    """Tokens signed with the real secret but with hostile claims, and plain fakes."""
    claim = st.one_of(
        st.none(),
        INT64,
        DOUBLE.filter(math.isfinite),
        TEXT,
        st.booleans(),
        st.lists(st.text(max_size=10), max_size=3),
    )
    claims = st.fixed_dictionaries(
        {"sub": SANE | TEXT | claim, "exp": st.just(int(time.time()) + 3600) | claim},
        optional={
            "nbf": claim,
            "iat": claim,
            "role": st.just("service") | claim,
            "aud": claim,
            "iss": claim,
        },
    )
    signed = claims.map(lambda c: t.hand_signed(HS256, c, SECRET.encode()))
    return st.one_of(signed, claims.map(t.alg_none), B64, PRINTABLE)


def auth() -> st.SearchStrategy[Metadata | None]:
    """Mostly mallory's good token (to get past authentication), else anything."""
    garbage = st.one_of(
        PRINTABLE.map(lambda v: [("authorization", v)]),
        forged_tokens().map(t.bearer),
        st.just(None),
    )
    return st.one_of(st.just(MALLORY), st.just(MALLORY), st.just(SERVICE), garbage)


# -- calling ------------------------------------------------------------------------------


def expect_documented(call: Callable[[], object], typed: bool = True) -> object:
    """Run ``call``; any error must be a documented code with a clean message."""
    try:
        return call()
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        assert code in ALLOWED, f"{code.name}: {details}"
        assert not any(marker in details for marker in LEAKY), details
        if code is Code.INVALID_ARGUMENT and typed:
            assert FIELD.match(details), details
        if code is Code.UNAUTHENTICATED:
            assert details in ("missing bearer token", "invalid token"), details
        return None


def first_of(stream: Any) -> object:
    """The first message of a server stream (None if it ended at once), then cancel it."""
    try:
        return next(stream, None)
    finally:
        stream.cancel()


# -- one test per RPC ---------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_submit_campaign(
    stub: jobs_pb2_grpc.JobServiceStub, known: Known, data: st.DataObject
) -> None:
    md = data.draw(auth())
    request = jobs_pb2.SubmitCampaignRequest(
        config=data.draw(st.none() | CONFIG),
        idempotency_key=data.draw(st.just("") | TEXT),
        on_behalf_of=data.draw(st.sampled_from(["", "mallory", "victim"]) | TEXT),
    )
    reply = expect_documented(partial_call(stub.SubmitCampaign, request, md))
    if isinstance(reply, jobs_pb2.SubmitCampaignResponse) and md in (MALLORY, SERVICE):
        owner = request.on_behalf_of if md is SERVICE else "mallory"
        known.created.append((owner, reply.job_id))


def partial_call(
    method: Callable[..., object], request: object, md: Metadata | None
) -> Callable[[], object]:
    return lambda: method(request, metadata=md, timeout=RPC_TIMEOUT)


@FUZZ
@given(data=st.data())
def test_get_and_cancel_job(
    stub: jobs_pb2_grpc.JobServiceStub, known: Known, data: st.DataObject
) -> None:
    md, job_id = data.draw(auth()), data.draw(job_ids(known))
    expect_documented(partial_call(stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), md))
    request = jobs_pb2.CancelJobRequest(job_id=job_id)
    expect_documented(partial_call(stub.CancelJob, request, md))


@FUZZ
@given(data=st.data())
def test_list_jobs(stub: jobs_pb2_grpc.JobServiceStub, known: Known, data: st.DataObject) -> None:
    request = jobs_pb2.ListJobsRequest(
        page_size=data.draw(st.integers(0, 600) | INT32),
        page_token=data.draw(page_tokens(known)),
        status=cast(Any, data.draw(st.integers(0, 6) | st.integers(-(2**31), 2**31 - 1))),
    )
    expect_documented(partial_call(stub.ListJobs, request, data.draw(auth())))


@FUZZ
@given(data=st.data())
def test_list_leads(stub: jobs_pb2_grpc.JobServiceStub, known: Known, data: st.DataObject) -> None:
    request = jobs_pb2.ListLeadsRequest(
        job_id=data.draw(job_ids(known)),
        page_size=data.draw(st.integers(0, 600) | INT32),
        page_token=data.draw(page_tokens(known)),
    )
    expect_documented(partial_call(stub.ListLeads, request, data.draw(auth())))


@FUZZ
@given(data=st.data())
def test_watch_job(stub: jobs_pb2_grpc.JobServiceStub, known: Known, data: st.DataObject) -> None:
    request = jobs_pb2.WatchJobRequest(
        job_id=data.draw(job_ids(known)), after_version=data.draw(st.integers(-5, 50) | INT64)
    )
    md = data.draw(auth())
    expect_documented(lambda: first_of(stub.WatchJob(request, metadata=md, timeout=RPC_TIMEOUT)))


def valid_body(method: str, known: Known) -> bytes:
    job_id = known.job_ids[0]
    requests = {
        "SubmitCampaign": jobs_pb2.SubmitCampaignRequest(config=t.config(), on_behalf_of="x"),
        "GetJob": jobs_pb2.GetJobRequest(job_id=job_id),
        "ListJobs": jobs_pb2.ListJobsRequest(page_size=2, page_token=known.page_tokens[0]),
        "WatchJob": jobs_pb2.WatchJobRequest(job_id=job_id, after_version=1),
        "CancelJob": jobs_pb2.CancelJobRequest(job_id=job_id),
        "ListLeads": jobs_pb2.ListLeadsRequest(job_id=job_id, page_token=known.page_tokens[1]),
    }
    return requests[method].SerializeToString()


def raw_bodies(method: str, known: Known) -> st.SearchStrategy[bytes]:
    """Random bytes, a valid body with bytes flipped or cut, and bad UTF-8 in a string."""
    body = valid_body(method, known)

    def flip(at: int, value: int, cut: bool) -> bytes:
        at %= len(body) or 1
        return body[:at] if cut else body[:at] + bytes([value]) + body[at + 1 :]

    bad_utf8 = st.binary(min_size=1, max_size=20).map(lambda b: b"\x0a" + bytes([len(b)]) + b)
    return st.one_of(
        st.binary(max_size=2048),
        st.builds(flip, st.integers(0, 999), st.integers(0, 255), st.booleans()),
        bad_utf8,
    )


@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_garbage_bodies(channel: grpc.Channel, known: Known, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(t.RPCS))
    body = data.draw(raw_bodies(name, known))
    md = data.draw(st.sampled_from([MALLORY, SERVICE, None]))
    if name == "WatchJob":
        call = channel.unary_stream(METHODS[name])
        expect_documented(lambda: first_of(call(body, metadata=md, timeout=RPC_TIMEOUT)), False)
    else:
        unary = channel.unary_unary(METHODS[name])
        expect_documented(partial_call(unary, body, md), typed=False)


@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_hostile_authorization(
    stub: jobs_pb2_grpc.JobServiceStub, known: Known, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(t.RPCS))
    token = data.draw(forged_tokens())
    scheme = data.draw(st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Basic ", "", "Bearer"]))
    md = [("authorization", scheme + token)]
    expect_documented(lambda: t.invoke(stub, name, md, known.job_ids[0]))


# -- afterwards ---------------------------------------------------------------------------


def test_still_healthy_after_fuzzing(
    fuzzed: Stack, channel: grpc.Channel, stub: jobs_pb2_grpc.JobServiceStub, known: Known
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    final = watch_to_end(stub, submit(stub, user_md("after-fuzz")), user_md("after-fuzz"))
    assert final.status == jobs_pb2.JOB_STATUS_COMPLETED, final.error
    deadline = time.monotonic() + 120  # every job the fuzzer created ends too
    pending = list(known.created)
    while pending and time.monotonic() < deadline:
        pending = [
            (owner, job_id)
            for owner, job_id in pending
            if stub.GetJob(
                jobs_pb2.GetJobRequest(job_id=job_id), metadata=user_md(owner), timeout=10
            ).status
            not in TERMINAL
        ]
        time.sleep(0.5)
    assert not pending, f"{len(pending)} fuzzed jobs never finished: {pending[:5]}"
    for label, proc in fuzzed.processes.items():
        assert proc.is_running, f"{label} died:\n{proc.log_tail()}"
        assert "Traceback" not in proc.log_text(), f"{label} logged a traceback:\n{proc.log_tail()}"
