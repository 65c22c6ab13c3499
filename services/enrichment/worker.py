"""Enrichment worker: one lead per task. Find a contact email for the business's domain,
verify it when the campaign asks, and report the result with the cost of each call."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.cache import CachedEmail, CachedVerification, EnrichmentCache
from services.common.domains import domain_of
from services.common.errors import ProviderError
from services.common.money import usd_to_micros
from services.common.providers import Charge
from services.common.providers.metering import WorkStopped
from services.common.settings import Settings
from services.common.worker import (
    TaskWorker,
    add_charges,
    publish_report,
    retry_delay,
    start_meter,
    worker_main,
)

log = logging.getLogger(__name__)


class EnrichmentWorker(TaskWorker[work_pb2.EnrichmentTask]):
    _cache: EnrichmentCache
    name = "enrichment"
    task_type = work_pb2.EnrichmentTask
    consumer = bus.ENRICHMENT_CONSUMER

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        return settings.enrichment_concurrency

    async def start(self) -> None:
        self._cache = await EnrichmentCache.open(
            self._js, self._settings.enrichment_cache_days, self._settings.stream_replicas
        )

    async def run(self, task: work_pb2.EnrichmentTask, msg: Msg) -> None:
        delivery = msg.metadata.num_delivered
        report_id = f"enrichment.{task.lead_id}.{task.attempt}.{delivery}"
        meter = start_meter(self._js, self._cancels, task.job_id, report_id, task.lead_id)
        report = work_pb2.WorkerReport(
            report_id=report_id,
            job_id=task.job_id,
            providers={
                "email_finder": self._providers.email_finder.name,
                "email_verifier": self._providers.email_verifier.name,
            },
        )
        charges: list[Charge] = []
        try:
            result = await self._enrich(task, charges)
        except WorkStopped:
            # Cancelled or failed meanwhile: account for what was spent, make no more calls.
            if charges or meter.pending:
                note = "Calls made before the job stopped"
                report.charges_only.CopyFrom(work_pb2.ChargesOnly(note=note, lead_id=task.lead_id))
                add_charges(report, meter, charges)
                await publish_report(self._js, report)
            await msg.ack()
            return
        except ProviderError as exc:
            if exc.retryable and delivery < self._settings.max_deliver:
                if charges or meter.pending:  # account for calls made, then retry
                    report.charges_only.CopyFrom(
                        work_pb2.ChargesOnly(note=f"Retrying a lead ({exc})", lead_id=task.lead_id)
                    )
                    add_charges(report, meter, charges)
                    await publish_report(self._js, report)
                await msg.nak(delay=exc.retry_after or retry_delay(delivery))
                return
            report.task_failure.CopyFrom(
                work_pb2.TaskFailure(
                    stage=jobs_pb2.STAGE_ENRICHING,
                    provider=exc.provider,
                    error=exc.detail,
                    permanent=not exc.retryable,
                    lead_id=task.lead_id,
                )
            )
            add_charges(report, meter, charges)
            await publish_report(self._js, report)
            await msg.ack()
            return
        report.enrichment_result.CopyFrom(result)
        add_charges(report, meter, charges)
        await publish_report(self._js, report)
        await msg.ack()

    def _affordable(
        self, task: work_pb2.EnrichmentTask, charges: list[Charge], price: float
    ) -> bool:
        """Whether a call of ``price`` fits in what this task may still spend."""
        if task.budget_micros == 0:
            return True
        spent = sum(usd_to_micros(c.cost_usd) for c in charges)
        return spent + usd_to_micros(price) <= task.budget_micros

    async def _enrich(
        self, task: work_pb2.EnrichmentTask, charges: list[Charge]
    ) -> work_pb2.EnrichmentResult:
        """Find and verify; ``charges`` collects each billable call as it is made. The cache
        answers first; a paid call is made only if the task's allowance covers its price."""
        finder, verifier = self._providers.email_finder, self._providers.email_verifier
        search_price = finder.price("email_search")
        verify_price = verifier.price("verify") if task.verify_emails else 0.0
        result = work_pb2.EnrichmentResult(
            lead_id=task.lead_id, lead_price_micros=usd_to_micros(search_price + verify_price)
        )
        domain = domain_of(task.place.website)
        if not domain:
            result.email_status = "no_website"
            return result
        cached = await self._cache.email(finder.name, domain)
        if cached is not None:
            result.from_cache = True
        elif not self._affordable(task, charges, search_price):
            result.email_status = "skipped_budget"
            return result
        else:
            found = await finder.find_email(domain, task.place.name)
            charges.extend(found.charges)
            cached = CachedEmail(found.email, found.confidence)
            await self._cache.store_email(finder.name, domain, cached)
        if not cached.email:
            result.email_status = "not_found"
            return result
        result.email = cached.email
        if not task.verify_emails or self._cancels.is_cancelled(task.job_id):
            result.email_status = "unverified"
            return result
        verified = await self._cache.verification(verifier.name, cached.email)
        if verified is not None:
            result.from_cache = True
        elif not self._affordable(task, charges, verify_price):
            result.email_status = "unverified"  # found, but the budget stops at verifying
            return result
        else:
            verification = await verifier.verify(cached.email)
            charges.extend(verification.charges)
            verified = CachedVerification(verification.status)
            await self._cache.store_verification(verifier.name, cached.email, verified)
        result.email_status = verified.status
        result.verified = True
        return result


def main() -> None:
    worker_main(EnrichmentWorker)
