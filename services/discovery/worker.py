"""Discovery worker: text search, details per place, scoring and qualification.

One task per job. Reports go to the jobs service as they happen (search started: 0; search
done: 10; details done: 30, these two left out when they would follow the previous report
within PROGRESS_MIN_INTERVAL_S; the qualified places), each carrying the charges of the
calls made since the last report. Paid calls are on the books before they are made (see
metering), so every billable call is accounted for whatever happens next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.errors import PermanentProviderError, ProviderError
from services.common.providers import Charge, PlaceDetails
from services.common.providers.metering import Meter, WorkStopped
from services.common.settings import Settings
from services.common.worker import (
    TaskWorker,
    add_charges,
    publish_report,
    retry_delay,
    start_meter,
    worker_main,
)
from services.discovery.scoring import qualify, score_place

log = logging.getLogger(__name__)

# Text Search pages hold 20 places and stop at 60: ask for twice what the user keeps, so
# scoring has something to choose from.
SEARCH_MIN, SEARCH_MAX = 20, 60
# A progress report this soon after the previous report is left out (its charges travel on
# the next one): with providers answering in milliseconds, nobody watching sees the step,
# and every report is a transaction for the jobs service.
PROGRESS_MIN_INTERVAL_S = 0.1


def to_place(details: PlaceDetails, score: int) -> work_pb2.Place:
    return work_pb2.Place(
        place_id=details.place_id,
        name=details.name,
        address=details.address,
        phone=details.phone,
        website=details.website,
        rating=details.rating,
        review_count=details.review_count,
        business_status=details.business_status,
        types=list(details.types),
        confidence_score=score,
        address_complete=details.address_complete,
    )


@dataclass
class _Run:
    """One delivery of one discovery task, and the charges not yet reported."""

    task: work_pb2.DiscoveryTask
    delivery: int
    meter: Meter
    unreported: list[Charge] = field(default_factory=list)
    spent: float = 0.0
    reports: int = 0
    last_report: float = 0.0  # time.monotonic() of the last report published

    def charge(self, charges: list[Charge]) -> None:
        self.unreported += charges
        self.spent += sum(c.cost_usd for c in charges)

    def next_report_id(self, what: str) -> str:
        self.reports += 1
        t = self.task
        return f"discovery.{t.job_id}.{t.attempt}.{self.delivery}.{self.reports}.{what}"


class DiscoveryWorker(TaskWorker[work_pb2.DiscoveryTask]):
    name = "discovery"
    task_type = work_pb2.DiscoveryTask
    consumer = bus.DISCOVERY_CONSUMER

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        return settings.discovery_concurrency

    async def _report(self, run: _Run, what: str, **body: object) -> None:
        report = work_pb2.WorkerReport(
            report_id=run.next_report_id(what),
            job_id=run.task.job_id,
            providers={"places": self._providers.places.name},
            **body,  # type: ignore[arg-type]
        )
        add_charges(report, run.meter, run.unreported)
        await publish_report(self._js, report)
        run.unreported = []
        run.last_report = time.monotonic()

    def _check_cancelled(self, run: _Run) -> None:
        if self._cancels.is_cancelled(run.task.job_id):
            raise WorkStopped("discovery stopped: the job is cancelled or failed")

    async def run(self, task: work_pb2.DiscoveryTask, msg: Msg) -> None:
        delivery = msg.metadata.num_delivered
        prefix = f"discovery.{task.job_id}.{task.attempt}.{delivery}"
        run = _Run(task, delivery, start_meter(self._js, self._cancels, task.job_id, prefix))
        try:
            await self._discover(run)
        except WorkStopped:
            if run.unreported or run.meter.pending:
                await self._charges_only(run, "Calls made before the cancel reached discovery")
            await msg.ack()
            return
        except ProviderError as exc:
            final = not exc.retryable or run.delivery >= self._settings.max_deliver
            if final:
                await self._report(
                    run,
                    "failure",
                    task_failure=work_pb2.TaskFailure(
                        stage=jobs_pb2.STAGE_DISCOVERING,
                        provider=exc.provider,
                        error=exc.detail,
                        permanent=not exc.retryable,
                    ),
                )
                await msg.ack()
            else:
                if run.unreported or run.meter.pending:
                    await self._charges_only(run, f"Discovery interrupted ({exc}); retrying")
                await msg.nak(delay=exc.retry_after or retry_delay(run.delivery))
            return
        await msg.ack()

    async def _charges_only(self, run: _Run, note: str) -> None:
        await self._report(run, "charges", charges_only=work_pb2.ChargesOnly(note=note))

    async def _progress(self, run: _Run, progress: int, found: int, message: str) -> None:
        if run.reports and time.monotonic() - run.last_report < PROGRESS_MIN_INTERVAL_S:
            return
        await self._report(
            run,
            "progress",
            discovery_progress=work_pb2.DiscoveryProgress(
                stage=jobs_pb2.STAGE_DISCOVERING,
                progress=progress,
                businesses_found=found,
                message=message,
            ),
        )

    async def _discover(self, run: _Run) -> None:
        config = run.task.config
        places = self._providers.places
        await self._progress(
            run, 0, 0, f"Searching for {config.business_type} in {config.location}"
        )
        limit = min(SEARCH_MAX, max(SEARCH_MIN, 2 * config.max_results))
        budget = config.budget_limit
        if budget:
            # Each billed search call returns up to page_size places: ask for no more pages
            # than the budget pays for.
            price = places.price("text_search")
            if price > budget:
                raise PermanentProviderError(
                    places.name,
                    f"budget_limit ${budget:.2f} is below the price of one search (${price:.3f})",
                )
            if price > 0:
                limit = min(limit, int(budget // price) * places.page_size)
        page = await places.search(config.business_type, config.location, limit)
        run.charge(page.charges)
        found = len(page.places)
        await self._progress(run, 10, found, f"Found {found} businesses")

        details = await self._details(run, [p.place_id for p in page.places])
        await self._progress(run, 30, found, f"Fetched details for {len(details)} businesses")

        scored = [(d, score_place(d, config.business_type)) for d in details]
        kept = qualify(scored, config.min_confidence_score, config.max_results)
        await self._report(
            run,
            "result",
            discovery_result=work_pb2.DiscoveryResult(
                businesses_found=found, qualified=[to_place(d, s) for d, s in kept]
            ),
        )

    async def _details(self, run: _Run, place_ids: list[str]) -> list[PlaceDetails]:
        """Details for each place, a bounded number at a time, within the budget."""
        budget = run.task.config.budget_limit
        places = self._providers.places
        gate = asyncio.Semaphore(self._settings.details_concurrency)
        results: dict[str, PlaceDetails] = {}
        reserved = 0.0  # prices of calls under way, so parallel calls cannot overspend

        async def one(place_id: str) -> None:
            nonlocal reserved
            async with gate:
                self._check_cancelled(run)
                price = places.details_price(place_id)
                if budget and run.spent + reserved + price > budget:
                    return  # over budget: this place goes unscored
                reserved += price
                try:
                    result = await places.details(place_id)
                finally:
                    reserved -= price
                run.charge(result.charges)
                results[place_id] = result.details

        outcomes = await asyncio.gather(*(one(p) for p in place_ids), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [results[p] for p in place_ids if p in results]


def main() -> None:
    worker_main(DiscoveryWorker)
