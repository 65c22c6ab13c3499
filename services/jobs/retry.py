"""RetryJob: a FAILED or CANCELLED job run again as a new job that pays only for what the
first one did not get.

One transaction records the new job (same user, config and schedule; ``retry_of`` the
first job) and links the first one to it (``retried_by``); the unique index on
``jobs.retry_of`` lets a job be retried once, however many replicas are asked at once, and
asking again answers the retry already made. What the first job paid for is reused:

- **It stored its leads** (its discovery reported): the places and their details are in
  those rows, so the new job does not discover at all. Its leads are copies, ranked as
  before: a lead the first job enriched comes with its email and status, settled and
  ``from_cache``; every other lead is enriched now, as usual (the enrichment cache
  answers, at no cost, any email search or verification already paid for within
  ``ENRICHMENT_CACHE_DAYS``). The new job starts ENRICHING (machine event
  :class:`~services.jobs.machine.RetryStarted`) and its books hold only its own spend.
- **It stopped while discovering**: nothing was stored, and the new job discovers.
"""

from __future__ import annotations

from datetime import datetime

from services.common import tracing
from services.common.errors import AlreadyExists, FailedPrecondition, Reason
from services.common.settings import Settings
from services.jobs import history
from services.jobs import machine as m
from services.jobs.changes import Changes, apply_event
from services.jobs.models import CampaignRow, JobRow, LeadRow, transient, utcnow
from services.jobs.publishing import Applied
from services.jobs.queries import owned
from services.jobs.submits import active_job_limit, new_campaign, submitted_message
from services.jobs.tasks import new_id, queue_discovery
from services.jobs.unit import Unit

RETRYABLE = (m.Status.FAILED, m.Status.CANCELLED)


class Retries:
    def __init__(self, settings: Settings, changes: Changes) -> None:
        self._settings = settings
        self._changes = changes

    async def retry(self, user_id: str, job_id: str, idempotency_key: str) -> JobRow:
        """The retry of the caller's FAILED or CANCELLED job ``job_id``: a new job, or the
        one already made (by an earlier call, with any key). NotFound for another user's
        job; FailedPrecondition (JOB_NOT_RETRYABLE) for a job in any other status;
        AlreadyExists when ``idempotency_key`` named another job; ResourceExhausted at
        MAX_ACTIVE_JOBS_PER_USER."""
        made: list[JobRow] = []

        def change(unit: Unit) -> list[Applied]:
            made.clear()
            first = owned(unit.job(job_id), user_id, job_id)
            if first.retried_by:
                made.append(owned(unit.job(first.retried_by), user_id, first.retried_by))
                return []
            status = m.Status(first.status)
            if status not in RETRYABLE:
                raise FailedPrecondition(
                    f"job {job_id} is {status.value}; only failed or cancelled jobs can be retried",
                    reason=Reason.JOB_NOT_RETRYABLE,
                    metadata={"job_id": job_id, "status": status.value},
                )
            if idempotency_key:
                known = unit.jobs_by_keys([(user_id, idempotency_key)])
                if known:
                    other = next(iter(known.values()))
                    raise AlreadyExists(
                        f"idempotency_key {idempotency_key!r} was used for job {other.id}; "
                        "use a new key",
                        metadata={"idempotency_key": idempotency_key, "job_id": other.id},
                    )
            limit = self._settings.max_active_jobs_per_user
            active = unit.active_jobs([user_id])[user_id]
            if active >= limit:
                raise active_job_limit(user_id, active, limit)
            job, applied = self._start(unit, first, idempotency_key)
            made.append(job)
            return applied

        # A retry inserted meanwhile by another replica is a duplicate key on retry_of:
        # Changes runs the change again, which then finds first.retried_by set.
        await self._changes.run(change)
        return made[-1]

    def _start(self, unit: Unit, first: JobRow, key: str) -> tuple[JobRow, list[Applied]]:
        """Record the retry of ``first`` in ``unit``; what it leaves to publish."""
        now = utcnow()
        job, campaign = _new_job(first, key, self._settings.job_max_attempts)
        unit.add_job(job, campaign)
        first.retried_by = job.id
        history.record(unit, first.id, [history.retried_by(first, job.id)], now)
        history.record(
            unit,
            job.id,
            [history.submitted(job, f"{submitted_message(job)}; a retry of job {first.id}")],
            now,
        )
        leads = unit.leads_of(first.id)
        if not leads and m.Stage(first.stage) in (m.Stage.QUEUED, m.Stage.DISCOVERING):
            row = queue_discovery(unit, job, attempt=1)
            unit.add_outbox([row])
            return job, [Applied(job_id=job.id, outbox=[row])]
        copies = [_copy(lead, job, now) for lead in leads]
        unit.add_leads(copies)
        done = [lead for lead in copies if lead.state == m.LeadState.ENRICHED]
        before = m.Metrics.from_json(first.metrics)
        scores = [lead.confidence_score for lead in copies]
        event = m.RetryStarted(
            retry_of=first.id,
            businesses_found=before.businesses_found,
            qualified=len(copies),
            done=len(done),
            emails_found=sum(1 for lead in done if lead.email),
            emails_verified=sum(
                1 for lead in done if lead.email_status == m.EmailStatus.VALID.value
            ),
            avg_confidence=round(sum(scores) / len(scores), 2) if scores else 0.0,
        )
        applied, _ = apply_event(unit, job, event)
        return job, [applied]


def _new_job(first: JobRow, key: str, max_attempts: int) -> tuple[JobRow, CampaignRow]:
    now = utcnow()
    job_id, campaign_id = new_id("job"), new_id("cmp")
    job = transient(
        JobRow,
        {
            "id": job_id,
            "campaign_id": campaign_id,
            "user_id": first.user_id,
            "type": first.type,
            "status": m.Status.PENDING.value,
            "stage": m.Stage.QUEUED.value,
            "progress": 0,
            "version": 1,
            "config": dict(first.config),
            "metrics": m.Metrics().to_json(),
            "error": "",
            "message": "Queued",
            "attempts": 1,
            "max_attempts": max_attempts,
            "idempotency_key": key or None,
            "created_at": now,
            "started_at": None,
            "completed_at": None,
            "updated_at": now,
            "stopping_since": None,
            "trace_context": tracing.current_traceparent(),
            "schedule_id": first.schedule_id,
            "retry_of": first.id,
            "retried_by": None,
        },
    )
    config = first.config
    campaign = new_campaign(
        campaign_id, job, str(config.get("business_type", "")), str(config.get("location", ""))
    )
    return job, campaign


def _copy(lead: LeadRow, job: JobRow, now: datetime) -> LeadRow:
    """``lead`` of the first job as a lead of ``job``: settled with its result when the
    first job enriched it (at no cost to ``job``), else PENDING."""
    enriched = lead.state == m.LeadState.ENRICHED
    return transient(
        LeadRow,
        {
            "id": new_id("lead"),
            "campaign_id": job.campaign_id,
            "job_id": job.id,
            "place_id": lead.place_id,
            "rank": lead.rank,
            "business_name": lead.business_name,
            "address": lead.address,
            "phone": lead.phone,
            "website": lead.website,
            "rating": lead.rating,
            "review_count": lead.review_count,
            "confidence_score": lead.confidence_score,
            "email": lead.email if enriched else "",
            "email_status": lead.email_status if enriched else m.EmailStatus.PENDING.value,
            "state": m.LeadState.ENRICHED.value if enriched else m.LeadState.PENDING.value,
            "cost_micros": 0,
            "cost_by_provider": {},
            "from_cache": enriched,
            "email_source": "cache" if enriched and lead.email_source else "",
            "cost_by_step": {},
            "created_at": now,
            "updated_at": now,
        },
    )
