"""Completion webhooks on a real stack: a receiver in this test verifies each request with
the secret RotateWebhookSecret showed, answers 500 then 200, and ListDeliveries lists both
attempts; private addresses are refused, at submit for a literal address and at delivery
for a name (no request reaches the receiver).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.e2e import tokens as t
from tests.e2e.cli import ok, run_cli

pytestmark = pytest.mark.e2e

SECRET = secrets.token_urlsafe(32)
ENV = {
    "AUTH_MODE": "jwt",
    "AUTH_JWT_SECRET": SECRET,
    "PAGE_TOKEN_SECRET": secrets.token_hex(32),
    "SANDBOX_LATENCY_MS": "5",
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "WEBHOOK_RETRY_BASE_S": "0.3",
}
T = TypeVar("T")


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on loopback recording each request; answers ``codes`` in turn
    (200 once they run out)."""

    codes: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Received(headers, body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("webhooks"), env=ENV)
    try:
        running.start()
        yield running
    except BaseException:
        print(f"\n===== logs of the stack =====\n{running.log_tails(80)}")
        raise
    finally:
        running.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver.handler())
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


class User:
    """A new user's calls to the jobs API."""

    def __init__(self, stack: Stack) -> None:
        self.channel = grpc.insecure_channel(stack.jobs_addr)
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        token = t.hs256(SECRET, t.claims(f"user-{uuid.uuid4().hex[:12]}"))
        self.metadata = (("authorization", f"Bearer {token}"),)

    def call(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)

    def submit(self, notify_url: str) -> str:
        config = jobs_pb2.CampaignConfig(
            business_type="bakery", location="Keyport, ME", max_results=2,
            min_confidence_score=0, verify_emails=True, notify_url=notify_url,
        )  # fmt: skip
        request = jobs_pb2.SubmitCampaignRequest(config=config)
        job_id: str = self.call("SubmitCampaign", request).job_id
        return job_id

    def deliveries(self, job_id: str = "") -> list[jobs_pb2.Delivery]:
        request = jobs_pb2.ListDeliveriesRequest(job_id=job_id)
        return list(self.call("ListDeliveries", request).deliveries)


@pytest.fixture
def user(stack: Stack) -> Iterator[User]:
    one = User(stack)
    try:
        yield one
    finally:
        one.channel.close()


def eventually(probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def verify(secret: str, request: Received) -> dict[str, Any]:
    """The body of ``request`` once its Standard Webhooks signature checks out with
    ``secret`` (the receiver's side of the specification, written out)."""
    msg_id = request.headers["webhook-id"]
    stamp = request.headers["webhook-timestamp"]
    assert abs(int(stamp) - time.time()) < 300
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{stamp}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [s.split(",", 1)[1] for s in request.headers["webhook-signature"].split()]
    assert any(hmac.compare_digest(expected, one) for one in offered)
    body: dict[str, Any] = json.loads(request.body)
    return body


def reason_of(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR))
    return info.reason


def test_a_job_s_webhook_is_signed_retried_after_a_500_and_listed(
    user: User, receiver: Receiver
) -> None:
    url = f"http://127.0.0.1:{receiver.port}/hooks/prospect?x=1"
    with pytest.raises(grpc.RpcError) as refused:
        user.submit(url)  # no secret yet: nobody could verify the request
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "WEBHOOK_SECRET_REQUIRED"

    secret = user.call("RotateWebhookSecret", jobs_pb2.RotateWebhookSecretRequest()).secret
    assert secret.startswith("whsec_")
    receiver.codes = [500]
    job_id = user.submit(url)

    def delivered() -> list[jobs_pb2.Delivery] | None:
        listed = user.deliveries(job_id)
        return listed if any(d.delivered for d in listed) else None

    listed = eventually(delivered)
    assert [d.attempt for d in listed] == [2, 1]  # newest first
    assert [(d.status_code, d.delivered) for d in listed] == [(200, True), (500, False)]
    assert listed[1].error == "HTTP 500"
    assert {d.job_id for d in listed} == {job_id} and {d.url for d in listed} == {url}
    assert len({d.delivery_id for d in listed}) == 1
    time.sleep(1.5)  # delivered once: no attempt after the 200
    assert len(receiver.requests) == 2 and len(user.deliveries(job_id)) == 2

    first, second = (verify(secret, r) for r in receiver.requests)
    assert receiver.requests[0].headers["webhook-id"] == listed[0].delivery_id
    assert receiver.requests[1].headers["webhook-id"] == listed[0].delivery_id
    assert first == second
    assert first["type"] == "job.finished"
    job = first["data"]
    assert job["id"] == job_id and job["status"] == "JOB_STATUS_COMPLETED"
    assert job["config"]["notifyUrl"] == url
    assert receiver.requests[0].headers["content-type"] == "application/json"

    # The listing is the caller's own: another user sees none of it.
    other = User.__new__(User)
    other.stub, other.channel = user.stub, user.channel
    other.metadata = (("authorization", f"Bearer {t.hs256(SECRET, t.claims('someone'))}"),)
    assert other.deliveries() == []
    with pytest.raises(grpc.RpcError) as hidden:
        other.deliveries(job_id)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_rotated_secret_signs_the_next_deliveries(user: User, receiver: Receiver) -> None:
    user.call("RotateWebhookSecret", jobs_pb2.RotateWebhookSecretRequest())
    newer = user.call("RotateWebhookSecret", jobs_pb2.RotateWebhookSecretRequest()).secret
    job_id = user.submit(f"http://127.0.0.1:{receiver.port}/hook")
    eventually(lambda: receiver.requests or None)
    assert verify(newer, receiver.requests[0])["data"]["id"] == job_id


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://127.0.0.2:8080/hook",  # loopback, but not the allowed 127.0.0.1
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",
        "http://example.com/hook",  # http for a host not allowed
    ],
)
def test_a_literal_private_address_is_refused_at_submit(user: User, url: str) -> None:
    user.call("RotateWebhookSecret", jobs_pb2.RotateWebhookSecretRequest())
    with pytest.raises(grpc.RpcError) as refused:
        user.submit(url)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(refused.value) == "UNSAFE_URL"
    assert "config.notify_url" in (refused.value.details() or "")


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    user: User, receiver: Receiver
) -> None:
    """``localhost`` is not in WEBHOOK_ALLOWED_HOSTS (127.0.0.1 is): the name passes at
    submit, and every attempt is refused when it resolves, before any request is made."""
    user.call("RotateWebhookSecret", jobs_pb2.RotateWebhookSecretRequest())
    job_id = user.submit(f"https://localhost:{receiver.port}/hook")
    attempts = eventually(lambda: user.deliveries(job_id)[1:] or None)
    for attempt in attempts:
        assert not attempt.delivered and attempt.status_code == 0
        assert "resolves to a loopback address" in attempt.error, attempt.error
    assert receiver.requests == []


def test_the_cli_rotates_submits_with_a_notify_url_and_lists_deliveries(
    stack: Stack, receiver: Receiver
) -> None:
    token = t.hs256(SECRET, t.claims(f"cli-{uuid.uuid4().hex[:12]}"))
    addr = stack.jobs_addr
    secret = ok(run_cli(addr, "--token", token, "webhook-secret", "rotate")).strip()
    assert secret.startswith("whsec_")
    url = f"http://127.0.0.1:{receiver.port}/cli"
    submitted = ok(
        run_cli(addr, "--token", token, "--json", "submit", "bakery", "Keyport, ME",
                "--max-results", "2", "--min-score", "0", "--notify-url", url)
    )  # fmt: skip
    job_id = json.loads(submitted)["job_id"]
    eventually(lambda: receiver.requests or None)
    assert verify(secret, receiver.requests[0])["data"]["id"] == job_id

    def listed() -> str | None:
        text = ok(run_cli(addr, "--token", token, "deliveries", "--job", job_id))
        return text if "delivered" in text else None

    table = eventually(listed)
    assert table.splitlines()[0].split() == ["AT", "JOB", "ATTEMPT", "HTTP", "RESULT"]
    assert job_id in table and " 200 " in table
