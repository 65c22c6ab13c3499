"""The transactional outbox (docs/design.md, "Flow", step 1).

Messages to JetStream are written as rows in the same transaction as the state change that
causes them, published after commit and then deleted. If the process dies in between, the
relay re-publishes the rows; the row id is the Nats-Msg-Id, so JetStream drops the copy.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy import delete, select

from services.common import tracing
from services.jobs.db import Writer
from services.jobs.models import OutboxRow, transient, utcnow
from services.jobs.unit import OUTBOX

log = logging.getLogger(__name__)

# Rows younger than this belong to a transaction whose own publish is still under way.
RELAY_MIN_AGE = timedelta(seconds=2)
RELAY_BATCH = 500


def outbox_row(
    msg_id: str, subject: str, message: Message | bytes, trace_context: str | None = None
) -> OutboxRow:
    """A row to publish ``message``; ``trace_context`` (a traceparent) goes in its headers."""
    payload = message if isinstance(message, bytes) else message.SerializeToString()
    values = {"id": msg_id, "subject": subject, "payload": payload, "trace_context": trace_context}
    return transient(OutboxRow, {**values, "created_at": utcnow()})


def _headers(row: OutboxRow) -> dict[str, str]:
    headers = {"Nats-Msg-Id": row.id}
    if row.trace_context:
        headers[tracing.TRACEPARENT] = row.trace_context
    return headers


class Outbox:
    def __init__(
        self,
        js: JetStreamContext,
        writer: Writer,
    ) -> None:
        self._writer = writer
        self._js = js
        # Published, not yet deleted: deleted in batches by the relay loop, which saves a
        # write transaction per publish (a crash in between only means a de-duplicated
        # re-publish).
        self._published: set[str] = set()
        self._publishing: set[asyncio.Task[None]] = set()

    def publish_soon(self, rows: list[OutboxRow]) -> None:
        """:meth:`publish` in the background (its failures are the relay's to mend)."""
        task = asyncio.create_task(self.publish(rows))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def settle(self) -> None:
        """Wait for the background publishes under way (before shutting down)."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    async def publish(self, rows: list[OutboxRow]) -> None:
        """Publish committed rows. On failure the relay tries again later."""
        # All at once: one round trip of waiting instead of one per row.
        results = await asyncio.gather(
            *(self._js.publish(row.subject, row.payload, headers=_headers(row)) for row in rows),
            return_exceptions=True,
        )
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):  # NATS down or slow: the relay retries
                log.warning("outbox publish of %s deferred: %r", row.id, result)
            else:
                self._published.add(row.id)

    async def forget_published(self) -> int:
        """Delete the rows already published; returns how many."""
        done, self._published = self._published, set()
        if done:
            await self._writer.run(
                lambda conn: conn.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(done)))
            )
        return len(done)

    async def relay_once(self) -> int:
        """Publish rows left behind by a crash or an earlier failure. Returns how many."""
        await self.forget_published()
        query = (
            select(OUTBOX)
            .where(OUTBOX.c.created_at < utcnow() - RELAY_MIN_AGE)
            .order_by(OUTBOX.c.created_at)
            .limit(RELAY_BATCH)
        )
        rows = await self._writer.read(
            lambda conn: [transient(OutboxRow, row._mapping) for row in conn.execute(query)]
        )
        if rows:
            log.info("outbox relay: re-publishing %d message(s)", len(rows))
            await self.publish(rows)
        return len(rows)

    async def run_relay(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                await self.relay_once()
            except Exception:
                log.exception("outbox relay failed; retrying")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
