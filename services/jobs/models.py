"""Tables of the jobs service (SQLAlchemy 2.0 typed models).

The jobs service is the only writer. Money is stored as integer micro-dollars so that sums
are exact; the API converts to dollars at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column

# Stable constraint names, so Alembic migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tz(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops tzinfo; put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_idempotency"),
        Index("ix_jobs_user_created", "user_id", "created_at"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_user_status", "user_id", "status"),
        Index("ix_jobs_schedule_created", "schedule_id", "created_at"),
        # A job is retried once: two RetryJob calls racing cannot both insert a retry.
        Index("uq_jobs_retry_of", "retry_of", unique=True),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(32), default="campaign")
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every change; the write path's UPDATE is guarded by the version it read
    # (services/jobs/unit.py: a stale one is a Conflict and the change runs again).
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")  # the latest human progress line
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Tz(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(Tz(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)
    # When the job began CANCELLING or FAILING: the stop deadline counts from here.
    stopping_since: Mapped[datetime | None] = mapped_column(Tz(), nullable=True)
    # The W3C traceparent of its SubmitCampaign span (services/common/tracing.py): later
    # work without a span of its own (a retry, a stop deadline) continues that trace.
    trace_context: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The schedule that started it (migration 0007), and the links of RetryJob (0009).
    schedule_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    retry_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    retried_by: Mapped[str | None] = mapped_column(String(40), nullable=True)


class CampaignRow(Base):
    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[str] = mapped_column(String(200))
    business_type: Mapped[str] = mapped_column(String(200))
    location: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    results_count: Mapped[int] = mapped_column(Integer, default=0)
    total_cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    avg_confidence: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(Tz(), nullable=True)


class LeadRow(Base):
    __tablename__ = "leads"
    __table_args__ = (
        UniqueConstraint("campaign_id", "place_id", name="uq_leads_campaign_place"),
        Index("ix_leads_job_rank", "job_id", "rank"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str] = mapped_column(String(40))
    place_id: Mapped[str] = mapped_column(String(300))
    rank: Mapped[int] = mapped_column(Integer)  # 0 = best score; dispatch and listing order
    business_name: Mapped[str] = mapped_column(String(300))
    address: Mapped[str] = mapped_column(String(500), default="")
    phone: Mapped[str] = mapped_column(String(64), default="")
    website: Mapped[str] = mapped_column(String(500), default="")
    rating: Mapped[float] = mapped_column(Float, default=0.0)
    review_count: Mapped[int] = mapped_column(Integer, default=0)
    confidence_score: Mapped[int] = mapped_column(Integer)
    email: Mapped[str] = mapped_column(String(320), default="")
    # services.jobs.machine.EmailStatus and LeadState values.
    email_status: Mapped[str] = mapped_column(String(32), default="pending")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # The same cost per provider: {"google_places": 1750, "hunter": 24500, ...}
    cost_by_provider: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    from_cache: Mapped[bool] = mapped_column(Boolean, default=False)
    # Which email-waterfall step found ``email``: "website", "pattern", "hunter", "cache" or "".
    email_source: Mapped[str] = mapped_column(String(16), default="")
    # What each waterfall step cost for this lead: {"website": 8000, "hunter": 32500, ...}
    cost_by_step: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class OutboxRow(Base):
    """A message to publish after its transaction commits; deleted once JetStream has it.

    ``id`` doubles as the Nats-Msg-Id, so a re-publish after a crash is de-duplicated.
    """

    __tablename__ = "outbox"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow, index=True)
    # The traceparent of the span that queued it, sent in the message's headers.
    trace_context: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TaskRow(Base):
    """A task the jobs service queued: a report is applied only when it names one of these
    (services/jobs/dispatched.py), and only within what that task may spend."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "task_" + 32 hex digits
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    lead_id: Mapped[str] = mapped_column(String(40), default="")  # "" for discovery
    kind: Mapped[str] = mapped_column(String(16))  # "discovery" or "enrichment"
    attempt: Mapped[int] = mapped_column(Integer)
    # The budget the task carried (0: none), and what its reports have booked so far.
    allowance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # A report ended it (a result, a failure, or stopped): it takes no more reports.
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class AppliedReportRow(Base):
    """Worker reports already applied: a redelivered report finds its id here and is dropped."""

    __tablename__ = "applied_reports"

    report_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    applied_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class ScheduleRow(Base):
    """A campaign that runs itself (services/jobs/schedules.py)."""

    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_schedules_user_idempotency"),
        Index("ix_schedules_user_created", "user_id", "created_at"),
        Index("ix_schedules_next_fire_at", "next_fire_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "sch_" + 32 hex digits
    user_id: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # as JobRow.config
    # {"cron": "0 9 * * MON-FRI", "time_zone": "Europe/Paris"} or {"interval_s": 3600},
    # with "start_time" / "end_time" (RFC 3339) when given.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    only_new_leads: Mapped[bool] = mapped_column(Boolean, default=False)
    notify_url: Mapped[str] = mapped_column(Text, default="")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # The next fire time due (None: the spec has no more, or the schedule ended).
    next_fire_at: Mapped[datetime | None] = mapped_column(Tz(), nullable=True)
    fire_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_job_id: Mapped[str] = mapped_column(String(40), default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class ScheduleFireRow(Base):
    """A fire time that started a job: the primary key lets each fire happen once, however
    many jobs replicas try it at once."""

    __tablename__ = "schedule_fires"

    schedule_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    fire_at: Mapped[datetime] = mapped_column(Tz(), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40))
    manual: Mapped[bool] = mapped_column(Boolean, default=False)  # TriggerSchedule
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class SchedulePlaceRow(Base):
    """A place a run of the schedule already delivered (only_new_leads skips it)."""

    __tablename__ = "schedule_places"

    schedule_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    place_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class WebhookSecretRow(Base):
    """A user's webhook signing secret ("whsec_" + base64), set by RotateWebhookSecret."""

    __tablename__ = "webhook_secrets"

    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    secret: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class WebhookDeliveryRow(Base):
    """A completion webhook to deliver, queued in its job's final transaction; retried with
    backoff until delivered or given up (next_attempt_at None)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_next_attempt_at", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Tz(), nullable=True)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class WebhookAttemptRow(Base):
    """One attempt to deliver a webhook (ListDeliveries)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_user_at", "user_id", "at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int] = mapped_column(Integer, default=0)  # 0: no answer
    error: Mapped[str] = mapped_column(Text, default="")
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)


class JobEventRow(Base):
    """One entry of a job's timeline (ListJobEvents), in ``seq`` order within the job."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(Tz(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")


M = TypeVar("M", bound=Base)

configure_mappers()


def transient(model: type[M], values: Mapping[Any, Any]) -> M:
    """A ``model`` instance holding ``values``, for the write path: it reads and writes
    rows with Core statements and never adds them to a session. Built without the mapped
    constructor, whose per-attribute events cost about 15 times more (later changes are
    instrumented as usual). ``values`` must name every column."""
    obj = sa_inspect(model).class_manager.new_instance()
    obj.__dict__.update(values)
    return cast(M, obj)
