"""Enrichment worker: one lead per task. Find a contact email for the business's domain
by the email waterfall (services/enrichment/waterfall.py), verify it when the campaign
asks, and report the result with the cost of each call and step.

A lead's paid calls fit in its allowance (``EnrichmentTask.budget_micros``), kept in the
shared ledger ``lead.<lead_id>`` (services/common/allowance.py), so a redelivered task
spends only what its predecessors left."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.cache import EnrichmentCache
from services.common.errors import ProviderError
from services.common.providers import Charge
from services.common.providers.metering import WorkStopped
from services.common.settings import Settings
from services.common.worker import (
    TaskWorker,
    add_charges,
    publish_report,
    retry_delay,
    worker_main,
)
from services.enrichment.waterfall import Waterfall, open_waterfall

log = logging.getLogger(__name__)


class EnrichmentWorker(TaskWorker[work_pb2.EnrichmentTask]):
    _cache: EnrichmentCache
    _waterfall: Waterfall
    name = "enrichment"
    task_type = work_pb2.EnrichmentTask
    consumer = bus.ENRICHMENT_CONSUMER

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        return settings.enrichment_concurrency

    def delivery_id(self, task: work_pb2.EnrichmentTask, delivery: int) -> str:
        return f"enrichment.{task.lead_id}.{task.attempt}.{delivery}"

    def lead_of(self, task: work_pb2.EnrichmentTask) -> str:
        return task.lead_id

    def provider_names(self) -> dict[str, str]:
        return {
            "email_finder": self._providers.email_finder.name,
            "email_verifier": self._providers.email_verifier.name,
        }

    async def start(self) -> None:
        await super().start()
        self._cache = await EnrichmentCache.open(self._js, self._settings.enrichment_cache_days)
        self._waterfall = open_waterfall(self._settings, self._providers, self._cache)

    async def run(self, task: work_pb2.EnrichmentTask, msg: Msg) -> None:
        delivery = msg.metadata.num_delivered
        report_id = self.delivery_id(task, delivery)
        meter = self.start_meter(task, report_id)
        report = self.new_report(task, report_id)
        charges: list[Charge] = []
        try:
            result = await self._enrich(task, charges)
        except WorkStopped:
            # Cancelled or failed meanwhile: account for what was spent, make no more calls,
            # and say the lead stopped (the job waits for it).
            report.report_id = f"{report_id}.stopped"
            note = "Stopped before its next paid call: the job is stopped"
            report.task_stopped.CopyFrom(work_pb2.TaskStopped(lead_id=task.lead_id, note=note))
            add_charges(report, meter, charges)
            await publish_report(self._js, report)
            await msg.ack()
            self.task_ended("cancelled")
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
                self.task_ended("retried")
                return
            log.warning(
                "enrichment of lead %s failed on delivery %d: %s", task.lead_id, delivery, exc,
                extra={"provider": exc.provider, "error": type(exc).__name__},
            )  # fmt: skip
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
            self.task_ended("failed")
            return
        report.enrichment_result.CopyFrom(result)
        add_charges(report, meter, charges)
        await publish_report(self._js, report)
        await msg.ack()
        self.task_ended("done")
        cached = " (from the cache)" if result.from_cache else ""
        log.debug("lead %s enriched: %s%s", task.lead_id, result.email_status, cached)

    async def _enrich(
        self, task: work_pb2.EnrichmentTask, charges: list[Charge]
    ) -> work_pb2.EnrichmentResult:
        """The lead's email waterfall (services/enrichment/waterfall.py); ``charges``
        collects each billable call as it is made. A paid call is made only if the lead's
        allowance, shared by every delivery of it, still covers its price."""
        allowance = self.allowance(f"lead.{task.lead_id}", task.budget_micros)
        return await self._waterfall.enrich(
            task, allowance, charges, lambda: self._cancels.is_cancelled(task.job_id)
        )


def main() -> None:
    worker_main(EnrichmentWorker)
