"""The work the jobs service queues: ids for new rows, and the outbox rows that carry a
discovery or an enrichment task, or a stop notice, to the workers (their message ids make a
re-publish a duplicate JetStream drops)."""

from __future__ import annotations

import uuid

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.jobs.models import JobRow, LeadRow, OutboxRow
from services.jobs.outbox import outbox_row


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def discovery_task_row(job: JobRow, attempt: int) -> OutboxRow:
    task = work_pb2.DiscoveryTask(
        job_id=job.id,
        campaign_id=job.campaign_id,
        config=jobs_pb2.CampaignConfig(**job.config),
        attempt=attempt,
    )
    return outbox_row(f"discovery.{job.id}.{attempt}", bus.DISCOVERY_SUBJECT, task)


def enrichment_task_row(
    job: JobRow, lead: LeadRow, allowance_micros: int, attempt: int
) -> OutboxRow:
    task = work_pb2.EnrichmentTask(
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
    return outbox_row(f"enrichment.{lead.id}.{attempt}", bus.ENRICHMENT_SUBJECT, task)


def stop_row(job_id: str) -> OutboxRow:
    """The job's entry in the cancellation bucket, which workers read before each task: in
    the outbox, so it is certain to be written once the stop commits."""
    # The subject a KeyValue.put of ``job_id`` publishes on (nats.js.kv).
    subject = f"$KV.{bus.CANCEL_BUCKET}.{job_id}"
    return outbox_row(f"stop.{job_id}", subject, b"1")
