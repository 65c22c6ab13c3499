"""Enrichment worker: one lead per task. Find a contact email for the business's domain,
verify it when the campaign asks, and report the result with the cost of each call."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.domains import domain_of
from services.common.errors import ProviderError
from services.common.providers import Charge
from services.common.settings import Settings
from services.common.worker import (
    TaskWorker,
    charges_proto,
    publish_report,
    retry_delay,
    worker_main,
)

log = logging.getLogger(__name__)


class EnrichmentWorker(TaskWorker[work_pb2.EnrichmentTask]):
    name = "enrichment"
    task_type = work_pb2.EnrichmentTask
    consumer = bus.ENRICHMENT_CONSUMER

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        return settings.enrichment_concurrency

    async def run(self, task: work_pb2.EnrichmentTask, msg: Msg) -> None:
        delivery = msg.metadata.num_delivered
        report = work_pb2.WorkerReport(
            report_id=f"enrichment.{task.lead_id}.{task.attempt}.{delivery}",
            job_id=task.job_id,
            providers={
                "email_finder": self._providers.email_finder.name,
                "email_verifier": self._providers.email_verifier.name,
            },
        )
        charges: list[Charge] = []
        try:
            result = await self._enrich(task, charges)
        except ProviderError as exc:
            if exc.retryable and delivery < self._settings.max_deliver:
                if charges:  # billed before the failure: account for it, then retry
                    report.charges_only.CopyFrom(
                        work_pb2.ChargesOnly(note=f"Retrying a lead ({exc})", lead_id=task.lead_id)
                    )
                    report.charges.extend(charges_proto(charges))
                    await publish_report(self._js, report)
                await msg.nak(delay=exc.retry_after or retry_delay(delivery))
                return
            report.task_failure.CopyFrom(
                work_pb2.TaskFailure(
                    stage=jobs_pb2.STAGE_ENRICHING,
                    provider=exc.provider,
                    error=str(exc),
                    permanent=not exc.retryable,
                    lead_id=task.lead_id,
                )
            )
            report.charges.extend(charges_proto(charges))
            await publish_report(self._js, report)
            await msg.ack()
            return
        report.enrichment_result.CopyFrom(result)
        report.charges.extend(charges_proto(charges))
        await publish_report(self._js, report)
        await msg.ack()

    async def _enrich(
        self, task: work_pb2.EnrichmentTask, charges: list[Charge]
    ) -> work_pb2.EnrichmentResult:
        """Find and verify; ``charges`` collects each billable call as it is made."""
        result = work_pb2.EnrichmentResult(lead_id=task.lead_id)
        domain = domain_of(task.place.website)
        if not domain:
            result.email_status = "no_website"
            return result
        found = await self._providers.email_finder.find_email(domain, task.place.name)
        charges.extend(found.charges)
        if not found.email:
            result.email_status = "not_found"
            return result
        result.email = found.email
        if not task.verify_emails or self._cancels.is_cancelled(task.job_id):
            result.email_status = "unverified"
            return result
        verification = await self._providers.email_verifier.verify(found.email)
        charges.extend(verification.charges)
        result.email_status = verification.status
        result.verified = True
        return result


def main() -> None:
    worker_main(EnrichmentWorker)
