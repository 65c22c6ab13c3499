"""Conversions between rows, machine state and protobuf messages (one place for all)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from prospect.v1 import jobs_pb2
from services.common.money import exact_micros, micros_to_usd
from services.jobs.machine import JobState, Metrics, Stage, Status
from services.jobs.models import JobRow, LeadRow


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def config_to_json(config: jobs_pb2.CampaignConfig) -> dict[str, Any]:
    """``config`` as stored (JobRow.config): the budget in one canonical form, its exact
    micro-dollars and the double derived from them, whichever form ``config`` gave (so
    equal budgets store equal, and every key is a CampaignConfig field)."""
    budget = exact_micros(config.budget_limit_micros, config.budget_limit)
    stored: dict[str, Any] = {
        "business_type": config.business_type,
        "location": config.location,
        "max_results": config.max_results,
        "min_confidence_score": config.min_confidence_score,
        "budget_limit": micros_to_usd(budget),
        "budget_limit_micros": budget,
        "verify_emails": config.verify_emails,
    }
    if config.notify_url:  # only when set: configs stored before it compare equal
        stored["notify_url"] = config.notify_url
    if config.target_verified_emails:  # likewise
        stored["target_verified_emails"] = config.target_verified_emails
    return stored


def budget_micros_of(data: Mapping[str, Any]) -> int:
    """A stored config's budget in micro-dollars (0 = none): its ``budget_limit_micros``,
    or for a config stored before that key, its ``budget_limit``."""
    micros = int(data.get("budget_limit_micros", 0) or 0)
    return exact_micros(micros, float(data.get("budget_limit", 0.0) or 0.0))


def config_from_json(data: dict[str, Any]) -> jobs_pb2.CampaignConfig:
    """The config stored as ``data``, its budget in both forms (from the exact one; a
    config stored before ``budget_limit_micros`` has only the double)."""
    config = jobs_pb2.CampaignConfig(**data)
    budget = budget_micros_of(data)
    config.budget_limit, config.budget_limit_micros = micros_to_usd(budget), budget
    return config


def state_of(row: JobRow) -> JobState:
    return JobState(
        status=Status(row.status),
        stage=Stage(row.stage),
        progress=row.progress,
        version=row.version,
        metrics=Metrics.from_json(row.metrics),
        error=row.error,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        budget_micros=budget_micros_of(row.config),
        target_verified=int(row.config.get("target_verified_emails", 0) or 0),
    )


def store_state(row: JobRow, state: JobState, message: str, now: datetime) -> None:
    """Write ``state`` onto ``row``, stamping started/completed times on the way."""
    if state.status != Status.PENDING and row.started_at is None:
        row.started_at = now
    if state.status.stopping and row.stopping_since is None:
        row.stopping_since = now
    if state.status.terminal and row.completed_at is None:
        row.completed_at = now
    row.status = state.status.value
    row.stage = state.stage.value
    row.progress = state.progress
    row.version = state.version
    row.metrics = state.metrics.to_json()
    row.error = state.error
    row.attempts = state.attempts
    row.message = message
    row.updated_at = now


def metrics_proto(m: Metrics) -> jobs_pb2.JobMetrics:
    return jobs_pb2.JobMetrics(
        businesses_found=m.businesses_found,
        qualified_leads=m.qualified_leads,
        leads_enriched=m.leads_enriched,
        total_cost=micros_to_usd(m.total_cost_micros),
        avg_confidence=m.avg_confidence,
        emails_verified=m.emails_verified,
        providers=m.providers,
        sandbox=m.sandbox,
        emails_found=m.emails_found,
        leads_skipped_budget=m.leads_skipped_budget,
        cost_by_provider={p: micros_to_usd(v) for p, v in m.cost_by_provider.items()},
        leads_from_cache=m.leads_from_cache,
        total_cost_micros=m.total_cost_micros,
        cost_by_provider_micros=m.cost_by_provider,
        leads_skipped_known=m.leads_skipped_known,
        leads_skipped_goal=m.leads_skipped_goal,
    )


def snapshot_proto(row: JobRow) -> jobs_pb2.JobUpdate:
    """A watch stream's snapshot of a job as stored."""
    return jobs_pb2.JobUpdate(job=job_proto(row), message=row.message)


def job_proto(row: JobRow, state: JobState | None = None) -> jobs_pb2.Job:
    """The API's view of a job: the row, or the row at an intermediate ``state``."""
    s = state or state_of(row)
    return jobs_pb2.Job(
        id=row.id,
        campaign_id=row.campaign_id,
        user_id=row.user_id,
        status=f"JOB_STATUS_{s.status.value}",
        stage=f"STAGE_{s.stage.value}",
        progress=s.progress,
        version=s.version,
        config=config_from_json(row.config),
        metrics=metrics_proto(s.metrics),
        error=s.error,
        attempts=s.attempts,
        max_attempts=s.max_attempts,
        created_at=timestamp(row.created_at),
        started_at=timestamp(row.started_at),
        completed_at=timestamp(row.completed_at) if s.status.terminal else None,
        updated_at=timestamp(row.updated_at),
        retry_of=row.retry_of or "",
        retried_by=row.retried_by or "",
        schedule_id=row.schedule_id or "",
    )


def status_from_proto(value: int) -> Status | None:
    """The machine's status for a proto JobStatus; None for UNSPECIFIED."""
    if value == jobs_pb2.JOB_STATUS_UNSPECIFIED:
        return None
    return Status(jobs_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_"))


def lead_proto(row: LeadRow) -> jobs_pb2.Lead:
    return jobs_pb2.Lead(
        id=row.id,
        campaign_id=row.campaign_id,
        place_id=row.place_id,
        business_name=row.business_name,
        address=row.address,
        phone=row.phone,
        website=row.website,
        email=row.email,
        email_status=row.email_status,
        confidence_score=row.confidence_score,
        cost=micros_to_usd(row.cost_micros),
        rating=row.rating,
        review_count=row.review_count,
        from_cache=row.from_cache,
        cost_by_provider={p: micros_to_usd(v) for p, v in (row.cost_by_provider or {}).items()},
        cost_micros=row.cost_micros,
        email_source=row.email_source,
        cost_by_step_micros=row.cost_by_step or {},
    )
