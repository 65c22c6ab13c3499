"""Completion webhooks' pure parts: the Standard Webhooks signature, the body, the retry
schedule, and the rules a notify_url is accepted under."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from prospect.v1 import jobs_pb2
from services.common.errors import InvalidArgument, Reason
from services.jobs import validation, webhooks
from services.jobs.convert import config_to_json
from services.jobs.models import JobRow, transient

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def reference_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The specification's algorithm, written out here apart from the code under test."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    assert webhooks.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == (
        VECTOR_SIGNATURE
    )
    assert reference_signature(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == (
        VECTOR_SIGNATURE
    )


def test_a_new_secret_signs_as_the_reference_does() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != webhooks.new_secret()
    body = b'{"type":"job.finished"}'
    headers = webhooks.headers(secret, "msg_1", 1700000000, body)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == reference_signature(secret, "msg_1", 1700000000, body)
    assert secret not in json.dumps(headers)


def _job(notify_url: str) -> JobRow:
    config = jobs_pb2.CampaignConfig(
        business_type="cafe", location="Paris", max_results=5, notify_url=notify_url
    )
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return transient(
        JobRow,
        {
            "id": "job_" + "a" * 32,
            "campaign_id": "cmp_" + "b" * 32,
            "user_id": "alice",
            "type": "campaign",
            "status": "COMPLETED",
            "stage": "DONE",
            "progress": 100,
            "version": 7,
            "config": config_to_json(config),
            "metrics": {},
            "error": "",
            "message": "Done",
            "attempts": 1,
            "max_attempts": 3,
            "idempotency_key": None,
            "created_at": now,
            "started_at": now,
            "completed_at": now,
            "updated_at": now,
            "stopping_since": None,
            "trace_context": None,
            "schedule_id": None,
            "retry_of": None,
            "retried_by": None,
        },
    )


def test_a_final_job_with_a_notify_url_queues_one_delivery_of_the_job_as_json() -> None:
    now = datetime.now(UTC)
    delivery = webhooks.queue_delivery(_job("https://hooks.example.com/x"), now)
    assert delivery is not None
    assert delivery.id.startswith("msg_") and len(delivery.id) == 36
    assert (delivery.url, delivery.next_attempt_at, delivery.attempts) == (
        "https://hooks.example.com/x",
        now,
        0,
    )
    body = json.loads(delivery.payload)
    assert body["type"] == "job.finished"
    assert body["timestamp"] == "2026-01-02T03:04:05Z"
    assert body["data"]["id"] == "job_" + "a" * 32
    assert body["data"]["status"] == "JOB_STATUS_COMPLETED"
    assert body["data"]["config"]["notifyUrl"] == "https://hooks.example.com/x"
    assert webhooks.queue_delivery(_job(""), now) is None


def test_retries_double_from_the_base_to_the_cap_for_at_least_a_day() -> None:
    schedule = webhooks.RetrySchedule()  # 5 s, 1 h, 24 h
    middle = lambda: 0.5  # noqa: E731 - no jitter
    assert [schedule.delay(n, middle) for n in range(1, 12)] == [
        5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600,
    ]  # fmt: skip
    assert schedule.delay(1, lambda: 0.0) == pytest.approx(4.0)
    assert schedule.delay(1, lambda: 1.0) == pytest.approx(6.0)
    assert schedule.delay(10_000, middle) == 3600
    queued = datetime(2026, 1, 1, tzinfo=UTC)
    at, attempt = queued, 1
    while (following := schedule.next_attempt(attempt, queued, at, middle)) is not None:
        at, attempt = following, attempt + 1
    assert at - queued >= timedelta(hours=24)
    assert at - queued < timedelta(hours=26)
    assert 30 <= attempt <= 40


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://hooks.example.com/x", "must use https"),
        ("ftp://hooks.example.com/x", "must be an absolute https:// URL"),
        ("/relative", "must be an absolute https:// URL"),
        ("https://user:pw@hooks.example.com/", "must not contain a user name or password"),
        ("https://hooks.example.com/" + "a" * 2048, "must be at most 2048 characters"),
        ("https://hooks.example.com/\n", "must not contain spaces or control characters"),
        ("https://127.0.0.1/", "must not name a loopback address"),
        ("https://10.1.2.3/", "must not name a private address"),
        ("https://172.16.0.1/", "must not name a private address"),
        ("https://192.168.1.1/", "must not name a private address"),
        ("https://169.254.169.254/latest/meta-data", "must not name a cloud metadata address"),
        ("https://[fd00:ec2::254]/", "must not name a cloud metadata address"),
        ("https://[::1]/", "must not name a loopback address"),
        ("https://[fc00::1]/", "must not name a private address"),
        ("https://[fe80::1]/", "must not name a link-local address"),
        ("https://[::ffff:127.0.0.1]/", "must not name a loopback address"),
        ("https://[::ffff:10.0.0.1]/", "must not name a private address"),
        ("https://0.0.0.0/", "must not name an unspecified address"),
        ("https://224.0.0.1/", "must not name a multicast address"),
        ("https://100.64.0.1/", "must not name an address that is not public"),
        ("https://2130706433/", "must write an IPv4 address as four decimal numbers"),
        ("https://0x7f000001/", "must write an IPv4 address as four decimal numbers"),
        ("https://127.1/", "must write an IPv4 address as four decimal numbers"),
    ],
)
def test_an_unsafe_notify_url_is_refused_naming_the_rule(url: str, rule: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.validate_notify_url(url)
    assert caught.value.reason == Reason.UNSAFE_URL
    assert caught.value.field == "config.notify_url"
    assert rule in caught.value.rule


def test_public_urls_pass_and_allowed_hosts_may_be_http_and_private() -> None:
    for url in (
        "https://hooks.example.com/x?a=1",
        "https://8.8.8.8:8443/",
        "https://[2001:4860::8888]/",
    ):
        assert validation.validate_notify_url(url) == url
    allowed = frozenset({"127.0.0.1", "localhost"})
    assert validation.validate_notify_url("http://127.0.0.1:9/x", allowed_hosts=allowed)
    assert validation.validate_notify_url("http://localhost:9/x", allowed_hosts=allowed)
    with pytest.raises(InvalidArgument):
        validation.validate_notify_url("http://10.0.0.1/", allowed_hosts=allowed)


def test_a_submit_keeps_its_notify_url_and_refuses_an_unsafe_one_as_unsafe_url() -> None:
    config = jobs_pb2.CampaignConfig(
        business_type="cafe", location="Paris", max_results=5, notify_url="https://h.example/x"
    )
    cleaned, _ = validation.validate_submit(jobs_pb2.SubmitCampaignRequest(config=config))
    assert cleaned.notify_url == "https://h.example/x"
    config.notify_url = "https://192.168.0.1/"
    with pytest.raises(InvalidArgument) as caught:
        validation.validate_submit(jobs_pb2.SubmitCampaignRequest(config=config))
    assert caught.value.reason == Reason.UNSAFE_URL
