"""Completion webhooks: what is sent, how it is signed, and when it is tried again.

A job whose config has a ``notify_url`` gets one delivery when it becomes final
(COMPLETED, FAILED or CANCELLED): a :class:`~services.jobs.models.WebhookDeliveryRow`
queued in the very transaction that makes it final (:func:`queue_delivery`, called from
:mod:`services.jobs.effects`), so a delivery is neither lost nor queued twice; the sender
(:mod:`services.jobs.webhook_sender`) then POSTs it until the receiver answers 2xx or the
retry schedule (:func:`next_attempt`) runs out.

Requests follow the Standard Webhooks specification (standardwebhooks.com): headers
``webhook-id`` (the delivery's id, the same on every attempt: the receiver's key for
de-duplication), ``webhook-timestamp`` (Unix seconds of the attempt) and
``webhook-signature`` (``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``,
keyed with the base64-decoded part of the user's secret after ``whsec_``). The body is the
Standard Webhooks envelope ``{"type": "job.finished", "timestamp": <when the job ended,
RFC 3339>, "data": <the Job, protobuf JSON mapping>}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf import json_format

from services.jobs.convert import job_proto
from services.jobs.models import JobRow, WebhookDeliveryRow, transient

EVENT_TYPE = "job.finished"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# A body larger than this is never queued (a job's JSON is a few KiB).
MAX_BODY_BYTES = 64 * 1024
# Jitter spreads retries of deliveries that failed together (a receiver down) apart.
JITTER = 0.2


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_delivery_id() -> str:
    """A delivery's id, its ``webhook-id``: ``msg_`` + 32 hex digits."""
    return "msg_" + secrets.token_hex(16)


def new_attempt_id() -> str:
    return "wha_" + secrets.token_hex(16)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of ``body`` sent as ``msg_id`` at ``timestamp``
    (Unix seconds), signed with ``secret`` (``whsec_`` + base64)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt to deliver ``body``."""
    return {
        "content-type": "application/json",
        "user-agent": "prospect-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def body_of(job: JobRow) -> bytes:
    """The body announcing that ``job`` (final, as stored) ended."""
    job_json = json_format.MessageToDict(job_proto(job))
    ended = job.completed_at or job.updated_at
    envelope = {
        "type": EVENT_TYPE,
        "timestamp": ended.isoformat().replace("+00:00", "Z"),
        "data": job_json,
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def queue_delivery(job: JobRow, now: datetime) -> WebhookDeliveryRow | None:
    """The delivery announcing that ``job`` (just made final, its row already holding the
    final state) ended, due at once; None when its config has no ``notify_url``."""
    url = str((job.config or {}).get("notify_url") or "")
    if not url:
        return None
    body = body_of(job)
    if len(body) > MAX_BODY_BYTES:  # cannot happen with validated configs; never send it
        return None
    return transient(
        WebhookDeliveryRow,
        {
            "id": new_delivery_id(),
            "job_id": job.id,
            "user_id": job.user_id,
            "url": url,
            "payload": body,
            "attempts": 0,
            "next_attempt_at": now,
            "delivered": False,
            "created_at": now,
        },
    )


@dataclass(frozen=True)
class RetrySchedule:
    """When a failed delivery is tried again: ``base_s`` after the first attempt, twice as
    long after each next one, at most ``cap_s`` apart (each delay jittered by
    +-:data:`JITTER`), until an attempt fails ``max_age_s`` or more after the delivery was
    queued: then it is given up. With the defaults (5 s, 1 h, 24 h) that is 10 attempts in
    the first 1.5 hours, then one an hour, about 34 in all over a little more than 24 h."""

    base_s: float = 5.0
    cap_s: float = 3600.0
    max_age_s: float = 86400.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 = the first)."""
        plain = min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 60))
        return plain * (1 + JITTER * (2 * rand() - 1))

    def next_attempt(
        self,
        attempt: int,
        queued_at: datetime,
        now: datetime,
        rand: Callable[[], float] = random.random,
    ) -> datetime | None:
        """When to try again after attempt ``attempt`` failed at ``now``; None: give up."""
        if (now - queued_at).total_seconds() >= self.max_age_s:
            return None
        return now + timedelta(seconds=self.delay(attempt, rand))
