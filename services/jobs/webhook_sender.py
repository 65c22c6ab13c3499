"""The completion webhooks' sender: a loop in every jobs replica that claims the
deliveries due, POSTs each one, records the attempt and schedules the next.

Delivery is at least once. A replica claims a delivery with a compare-and-set on its
attempt count (the UPDATE names the count it read, so of several replicas one wins) and
moves its next attempt past the request's deadline (a lease: a replica that dies while
sending leaves it to be tried again then). The attempt and the delivery's new state are
written together after the request; the receiver de-duplicates on ``webhook-id``.

Each request goes to an address vetted at that moment (:func:`safe_urls.resolve_public`):
the connection is made to that very address, with the URL's host kept for ``Host`` and
for TLS (SNI and certificate checks), so a name that resolves elsewhere a moment later
(DNS rebinding) cannot redirect it. Redirects are not followed (a 3xx is a failed
attempt), no proxy from the environment is used, connections are not reused (a
connection is bound to the name it was opened for), and at most
:data:`MAX_RESPONSE_BYTES` of an answer are read before it is dropped.

A job that becomes final wakes the sender of its replica (:meth:`WebhookSender.wake`), so
a delivery leaves within milliseconds; the others find theirs at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Connection, Table, insert, select, update

from services.common import safe_urls
from services.common.logs import job_context
from services.common.settings import Settings
from services.jobs import metrics, webhooks
from services.jobs.db import Writer
from services.jobs.models import WebhookAttemptRow, WebhookDeliveryRow, WebhookSecretRow, utcnow

log = logging.getLogger(__name__)

DELIVERIES: Table = WebhookDeliveryRow.__table__  # type: ignore[assignment]
ATTEMPTS: Table = WebhookAttemptRow.__table__  # type: ignore[assignment]
SECRETS: Table = WebhookSecretRow.__table__  # type: ignore[assignment]
# Deliveries claimed at once, and requests in flight at once, per replica.
BATCH = 32
MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_CHARS = 300
CONNECT_TIMEOUT_S = 5.0
# A claim holds a delivery for the request's deadline plus this; then others may take it.
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True)
class Claimed:
    """A delivery this replica claimed: its attempt number is ``attempt``."""

    id: str
    job_id: str
    user_id: str
    url: str
    payload: bytes
    attempt: int
    created_at: datetime
    secret: str  # "" when the user has none


@dataclass(frozen=True)
class Outcome:
    status_code: int = 0  # 0: no answer
    error: str = ""

    @property
    def delivered(self) -> bool:
        return 200 <= self.status_code < 300


def _claim(conn: Connection, now: datetime, lease_until: datetime, limit: int) -> list[Claimed]:
    """Claim up to ``limit`` deliveries due at ``now``: each UPDATE names the attempt count
    it read, so a delivery another replica claimed meanwhile is skipped."""
    due = conn.execute(
        select(
            DELIVERIES.c.id,
            DELIVERIES.c.job_id,
            DELIVERIES.c.user_id,
            DELIVERIES.c.url,
            DELIVERIES.c.payload,
            DELIVERIES.c.attempts,
            DELIVERIES.c.created_at,
        )
        .where(DELIVERIES.c.next_attempt_at <= now)
        .order_by(DELIVERIES.c.next_attempt_at)
        .limit(limit)
    ).all()
    if not due:
        return []
    users = list({row.user_id for row in due})
    secrets = dict(
        conn.execute(
            select(SECRETS.c.user_id, SECRETS.c.secret).where(SECRETS.c.user_id.in_(users))
        ).all()
    )
    claimed = []
    for row in due:
        taken = conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.id == row.id, DELIVERIES.c.attempts == row.attempts)
            .values(attempts=row.attempts + 1, next_attempt_at=lease_until)
        ).rowcount
        if taken == 1:
            claimed.append(
                Claimed(
                    row.id,
                    row.job_id,
                    row.user_id,
                    row.url,
                    bytes(row.payload),
                    row.attempts + 1,
                    row.created_at,
                    secrets.get(row.user_id, ""),
                )
            )
    return claimed


class WebhookSender:
    """Sends the completion webhooks due, from this replica (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        writer: Writer,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._writer = writer
        self._allowed = settings.webhook_hosts
        self._timeout_s = settings.webhook_timeout_s
        self._poll_s = settings.outbox_poll_s
        self._schedule = webhooks.RetrySchedule(
            base_s=settings.webhook_retry_base_s,
            cap_s=settings.webhook_retry_max_s,
            max_age_s=settings.webhook_max_age_s,
        )
        self._transport = transport
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A delivery may be due now (a change on this replica just queued one)."""
        self._wake.set()

    @property
    def woken(self) -> bool:
        """Whether a wake-up is waiting for the next round (which clears it)."""
        return self._wake.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver what is due until ``stop``: at once when woken, else every poll."""
        limits = httpx.Limits(max_connections=BATCH, max_keepalive_connections=0)
        timeout = httpx.Timeout(self._timeout_s, connect=min(CONNECT_TIMEOUT_S, self._timeout_s))
        async with httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=limits,
            timeout=timeout,
            transport=self._transport,
        ) as client:
            while not stop.is_set():
                self._wake.clear()
                try:
                    sent = await self.deliver_due(client)
                except Exception as exc:  # the database away: try again at the next poll
                    log.warning("delivering webhooks failed: %r", exc)
                    sent = 0
                if sent >= BATCH:
                    continue  # more may be due
                await _first_of(stop, self._wake, self._poll_s)

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """One round: claim the deliveries due, send them, record the attempts; returns
        how many were attempted."""
        now = utcnow()
        lease = now + timedelta(seconds=self._timeout_s + LEASE_MARGIN_S)
        claimed = await self._writer.run(lambda conn: _claim(conn, now, lease, BATCH))
        if not claimed:
            return 0
        outcomes = await asyncio.gather(*(self._attempt(client, one) for one in claimed))
        await self._writer.run(lambda conn: self._record(conn, claimed, outcomes))
        return len(claimed)

    async def _attempt(self, client: httpx.AsyncClient, delivery: Claimed) -> Outcome:
        if not delivery.secret:
            return Outcome(error="no webhook secret: call RotateWebhookSecret")
        try:
            target = await safe_urls.resolve_public(delivery.url, self._allowed)
        except safe_urls.UnsafeUrl as exc:
            return Outcome(error=f"refused: {exc}")
        stamp = int(time.time())
        headers = webhooks.headers(delivery.secret, delivery.id, stamp, delivery.payload)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await _post(client, delivery.url, target, headers, delivery.payload)
        except TimeoutError:
            return Outcome(error=f"no answer within {self._timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Outcome(error=_short(f"{type(exc).__name__}: {exc}"))

    def _record(
        self, conn: Connection, claimed: Sequence[Claimed], outcomes: Sequence[Outcome]
    ) -> None:
        now = utcnow()
        attempts = []
        for delivery, outcome in zip(claimed, outcomes, strict=True):
            attempts.append(
                {
                    "id": webhooks.new_attempt_id(),
                    "delivery_id": delivery.id,
                    "job_id": delivery.job_id,
                    "user_id": delivery.user_id,
                    "url": delivery.url,
                    "attempt": delivery.attempt,
                    "status_code": outcome.status_code,
                    "error": outcome.error,
                    "delivered": outcome.delivered,
                    "at": now,
                }
            )
            following = None
            if not outcome.delivered:
                following = self._schedule.next_attempt(delivery.attempt, delivery.created_at, now)
            result = "delivered" if outcome.delivered else "failed" if following else "gave_up"
            conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id == delivery.id, DELIVERIES.c.attempts == delivery.attempt)
                .values(delivered=outcome.delivered, next_attempt_at=following)
            )
            metrics.WEBHOOK_DELIVERIES.labels(result).inc()
            with job_context(delivery.job_id):
                log.info(
                    "webhook %s of job %s, attempt %d: %s (%s)",
                    delivery.id,
                    delivery.job_id,
                    delivery.attempt,
                    result,
                    outcome.error or f"HTTP {outcome.status_code}",
                )
        conn.execute(insert(ATTEMPTS), attempts)


async def _post(
    client: httpx.AsyncClient,
    url: str,
    target: safe_urls.Target,
    headers: dict[str, str],
    body: bytes,
) -> Outcome:
    """POST ``body`` to ``url`` at ``target.address``, its host kept for Host and TLS."""
    parsed = httpx.URL(url)
    pinned = parsed.copy_with(host=str(target.address))
    extensions = {}
    if parsed.scheme == "https" and target.named:
        extensions["sni_hostname"] = target.host
    request_headers = {**headers, "host": parsed.netloc.decode("ascii")}
    async with client.stream(
        "POST", pinned, content=body, headers=request_headers, extensions=extensions
    ) as response:
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                break
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(status_code=code)
    if 300 <= code < 400:
        return Outcome(status_code=code, error=f"HTTP {code}: redirects are not followed")
    return Outcome(status_code=code, error=f"HTTP {code}")


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


async def _first_of(stop: asyncio.Event, wake: asyncio.Event, wait_s: float) -> None:
    """Wait until ``stop`` or ``wake`` is set, at most ``wait_s`` seconds."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for one in waits:
            one.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await one
