"""The work the jobs service queues: ids for new rows, and the outbox rows that carry a
discovery or an enrichment task, or a stop notice, to the workers (their message ids make a
re-publish a duplicate JetStream drops).

Each task queued is also recorded (a :class:`TaskRow` under an unguessable id that the
task carries): the jobs service applies a report only when it names a task recorded here,
of its job, attempt and lead (services/jobs/dispatched.py)."""

from __future__ import annotations

import uuid

from prospect.v1 import work_pb2
from services.common import bus, tracing
from services.jobs.convert import budget_micros_of, config_from_json
from services.jobs.models import JobRow, LeadRow, OutboxRow, TaskRow, transient, utcnow
from services.jobs.outbox import outbox_row
from services.jobs.schedule_places import known_places
from services.jobs.unit import Unit

DISCOVERY, ENRICHMENT = "discovery", "enrichment"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _trace_context(job: JobRow) -> str | None:
    """Where a task's span hangs in the job's trace: under the span queueing it (applying
    a report), else under the job's own (a retry by the watchdog, the submit's batch)."""
    return tracing.current_traceparent() or job.trace_context


def _record(
    unit: Unit, job: JobRow, kind: str, attempt: int, lead_id: str, allowance_micros: int
) -> str:
    """Record a task about to be queued in ``unit``; its id."""
    task_id = new_id("task")
    unit.add_task(
        transient(
            TaskRow,
            {
                "id": task_id,
                "job_id": job.id,
                "lead_id": lead_id,
                "kind": kind,
                "attempt": attempt,
                "allowance_micros": allowance_micros,
                "spent_micros": 0,
                "closed": False,
                "created_at": utcnow(),
            },
        )
    )
    return task_id


def queue_discovery(unit: Unit, job: JobRow, attempt: int) -> OutboxRow:
    """Record ``job``'s discovery task for ``attempt`` in ``unit``; the row to publish."""
    budget = budget_micros_of(job.config)
    task = work_pb2.DiscoveryTask(
        job_id=job.id,
        campaign_id=job.campaign_id,
        config=config_from_json(job.config),  # the budget in both forms
        attempt=attempt,
        task_id=_record(unit, job, DISCOVERY, attempt, "", budget),
        known_place_ids=known_places(unit, job),
    )
    subject, msg_id = bus.DISCOVERY_SUBJECT, f"discovery.{job.id}.{attempt}"
    return outbox_row(msg_id, subject, task, _trace_context(job))


def queue_enrichment(
    unit: Unit, job: JobRow, lead: LeadRow, allowance_micros: int, attempt: int
) -> OutboxRow:
    """Record the enrichment of ``lead`` for ``attempt`` in ``unit``; the row to publish."""
    task = work_pb2.EnrichmentTask(
        task_id=_record(unit, job, ENRICHMENT, attempt, lead.id, allowance_micros),
        job_id=job.id,
        campaign_id=job.campaign_id,
        lead_id=lead.id,
        place=work_pb2.Place(
            place_id=lead.place_id,
            name=lead.business_name,
            address=lead.address,
            phone=lead.phone,
            website=lead.website,
            confidence_score=lead.confidence_score,
        ),
        verify_emails=bool(job.config.get("verify_emails", False)),
        attempt=attempt,
        budget_micros=allowance_micros,
    )
    subject, msg_id = bus.ENRICHMENT_SUBJECT, f"enrichment.{lead.id}.{attempt}"
    return outbox_row(msg_id, subject, task, _trace_context(job))


def stop_row(job_id: str) -> OutboxRow:
    """The job's entry in the cancellation bucket, which workers read before each task: in
    the outbox, so it is certain to be written once the stop commits."""
    # The subject a KeyValue.put of ``job_id`` publishes on (nats.js.kv).
    subject = f"$KV.{bus.CANCEL_BUCKET}.{job_id}"
    return outbox_row(f"stop.{job_id}", subject, b"1")
