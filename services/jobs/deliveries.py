"""What the API does for completion webhooks: a user's signing secret (rotated, shown once,
required before a notify_url is accepted) and the listing of delivery attempts.

A secret is never shown again after RotateWebhookSecret answers it: there is no way to
read one back, only to replace it (deliveries still to be attempted are signed with the
new one). A job or schedule with a notify_url is refused (FAILED_PRECONDITION,
WEBHOOK_SECRET_REQUIRED) while its owner has no secret, so no delivery goes out signed
with a key nobody holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prospect.v1 import jobs_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, Reason
from services.jobs import queries, webhooks
from services.jobs.convert import timestamp
from services.jobs.db import Writer
from services.jobs.models import WebhookAttemptRow, WebhookSecretRow, utcnow
from services.jobs.page_tokens import PageTokens

SECRETS: Table = WebhookSecretRow.__table__  # type: ignore[assignment]
ATTEMPT_ID_LENGTH = 36  # "wha_" + 32 hex digits


def _rotate(conn: Connection, user_id: str, secret: str) -> None:
    conn.execute(delete(SECRETS).where(SECRETS.c.user_id == user_id))
    conn.execute(insert(SECRETS).values(user_id=user_id, secret=secret, created_at=utcnow()))


async def rotate_secret(writer: Writer, user_id: str) -> str:
    """A new signing secret for ``user_id``, replacing any other; returned this once."""
    secret = webhooks.new_secret()
    await writer.run(lambda conn: _rotate(conn, user_id, secret))
    return secret


def _has_secret(conn: Connection, user_id: str) -> bool:
    found = conn.execute(select(SECRETS.c.user_id).where(SECRETS.c.user_id == user_id)).first()
    return found is not None


async def require_secret(writer: Writer, user_id: str) -> None:
    """FailedPrecondition (WEBHOOK_SECRET_REQUIRED) unless ``user_id`` has a secret: call
    before accepting a notify_url (a submit, a schedule)."""
    if not await writer.read(lambda conn: _has_secret(conn, user_id)):
        raise FailedPrecondition(
            "notify_url needs a webhook signing secret: call RotateWebhookSecret "
            "(prospect webhook-secret rotate) first, and keep the secret it shows",
            reason=Reason.WEBHOOK_SECRET_REQUIRED,
        )


def delivery_proto(row: WebhookAttemptRow) -> jobs_pb2.Delivery:
    return jobs_pb2.Delivery(
        delivery_id=row.delivery_id,
        job_id=row.job_id,
        url=row.url,
        attempt=row.attempt,
        status_code=row.status_code,
        error=row.error,
        at=timestamp(row.at),
        delivered=row.delivered,
    )


def _position(position: dict[str, Any], field: str = "page_token") -> tuple[datetime, str]:
    """(time, id) of the last attempt a page showed; InvalidArgument when the token's
    position is not one (it is signed, yet check it all)."""
    when, last_id = position.get("a"), position.get("i")
    refused = InvalidArgument(field, "is not a token this listing returned")
    if (
        not isinstance(when, str)
        or not isinstance(last_id, str)
        or len(last_id) != ATTEMPT_ID_LENGTH
        or not last_id.startswith("wha_")
        or len(position) != 2
    ):
        raise refused
    try:
        at = datetime.fromisoformat(when)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at.astimezone(UTC), last_id
    except (ValueError, OverflowError):
        raise refused from None


async def list_deliveries(
    session: AsyncSession,
    tokens: PageTokens,
    user_id: str,
    job_id: str,
    page_size: int,
    page_token: str,
) -> tuple[list[WebhookAttemptRow], str]:
    """The caller's delivery attempts (of one job when ``job_id``), newest first; a page and
    the token of the next one ("" at the end)."""
    scope = f"deliveries:{user_id}:{job_id or '*'}"
    position = tokens.decode(page_token, scope)
    attempt = WebhookAttemptRow
    query = select(attempt).where(attempt.user_id == user_id)
    if job_id:
        query = query.where(attempt.job_id == job_id)
    if position is not None:
        at, last_id = _position(position)
        query = query.where(or_(attempt.at < at, and_(attempt.at == at, attempt.id < last_id)))
    query = query.order_by(attempt.at.desc(), attempt.id.desc()).limit(page_size + 1)
    rows = list((await session.scalars(query)).all())
    next_token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        next_token = tokens.encode(scope, {"a": last.at.isoformat(), "i": last.id})
    return rows, next_token


class WebhookRpcs:
    """The webhook RPCs' work, for :class:`services.jobs.api.JobService`: the caller's
    secret, its deliveries, and the rules a notify_url is accepted under."""

    def __init__(
        self,
        writer: Writer,
        sessions: async_sessionmaker[AsyncSession],
        tokens: PageTokens,
        allowed_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self._writer = writer
        self._sessions = sessions
        self._tokens = tokens
        self.allowed_hosts = allowed_hosts  # WEBHOOK_ALLOWED_HOSTS

    async def rotate(self, user_id: str) -> jobs_pb2.WebhookSecret:
        return jobs_pb2.WebhookSecret(secret=await rotate_secret(self._writer, user_id))

    async def require_secret(self, user_id: str) -> None:
        await require_secret(self._writer, user_id)

    async def list(
        self, user_id: str, job_id: str, page_size: int, page_token: str
    ) -> jobs_pb2.ListDeliveriesResponse:
        """The caller's attempts (of ``job_id``, one of the caller's jobs, when given)."""
        async with self._sessions() as session:
            if job_id:
                await queries.job_for_user(session, user_id, job_id)  # NotFound otherwise
            rows, token = await list_deliveries(
                session, self._tokens, user_id, job_id, page_size, page_token
            )
        return jobs_pb2.ListDeliveriesResponse(
            deliveries=[delivery_proto(r) for r in rows], next_page_token=token
        )
