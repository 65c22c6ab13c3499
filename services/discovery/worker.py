"""Discovery worker: text search, details per place, scoring and qualification.

One task per job. Reports go to the jobs service as they happen (search started: 0; search
done: 10; details done: 30, these two left out when they would follow the previous report
within PROGRESS_MIN_INTERVAL_S; the qualified places), each carrying the charges of the
calls made since the last report. Paid requests are on the books as they leave (see
metering), so every billable call is accounted for whatever happens next.

With a ``budget_limit``, every paid call of the job's discovery goes through the shared
ledger ``job.<job_id>`` (services/common/allowance.py): a redelivered or retried discovery
spends only what earlier tries left of the budget.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from dataclasses import dataclass, field

from google.protobuf.message import Message
from nats.aio.msg import Msg

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.allowance import Allowance
from services.common.errors import PermanentProviderError, ProviderError
from services.common.money import usd_to_micros
from services.common.providers import Charge, PlaceDetails, SearchPage
from services.common.providers.metering import Meter, WorkStopped
from services.common.settings import Settings
from services.common.worker import (
    TaskWorker,
    add_charges,
    publish_report,
    retry_delay,
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
    prefix: str  # of every report id of this delivery
    delivery: int
    meter: Meter
    allowance: Allowance  # the job's budget, shared by every try of its discovery
    unreported: list[Charge] = field(default_factory=list)
    reports: int = 0
    last_report: float = 0.0  # time.monotonic() of the last report published

    def charge(self, charges: list[Charge]) -> None:
        self.unreported += charges

    def next_report_id(self, what: str) -> str:
        self.reports += 1
        return f"{self.prefix}.{self.reports}.{what}"


class DiscoveryWorker(TaskWorker[work_pb2.DiscoveryTask]):
    name = "discovery"
    task_type = work_pb2.DiscoveryTask
    consumer = bus.DISCOVERY_CONSUMER

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        return settings.discovery_concurrency

    def delivery_id(self, task: work_pb2.DiscoveryTask, delivery: int) -> str:
        return f"discovery.{task.job_id}.{task.attempt}.{delivery}"

    def provider_names(self) -> dict[str, str]:
        return {"places": self._providers.places.name}

    async def _report(self, run: _Run, what: str, **body: Message) -> None:
        """Publish the report ``what`` with ``body`` (its oneof field by name) and the
        charges and intents not reported yet."""
        report = self.new_report(run.task, run.next_report_id(what))
        for name, message in body.items():
            getattr(report, name).CopyFrom(message)
        add_charges(report, run.meter, run.unreported)
        await publish_report(self._js, report)
        run.unreported = []
        run.last_report = time.monotonic()

    def _check_cancelled(self, run: _Run) -> None:
        if self._cancels.is_cancelled(run.task.job_id):
            raise WorkStopped("discovery stopped: the job is cancelled or failed")

    async def run(self, task: work_pb2.DiscoveryTask, msg: Msg) -> None:
        delivery = msg.metadata.num_delivered
        prefix = self.delivery_id(task, delivery)
        budget = self.allowance(f"job.{task.job_id}", usd_to_micros(task.config.budget_limit))
        run = _Run(task, prefix, delivery, self.start_meter(task, prefix), budget)
        try:
            await self._discover(run)
        except WorkStopped:
            # The job waits for this word before it ends; it carries what was spent.
            note = "Discovery stopped: the job is stopped"
            await self._report(run, "stopped", task_stopped=work_pb2.TaskStopped(note=note))
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
                    note = f"Discovery interrupted ({exc}); retrying"
                    await self._report(run, "charges", charges_only=work_pb2.ChargesOnly(note=note))
                await msg.nak(delay=exc.retry_after or retry_delay(run.delivery))
            return
        await msg.ack()

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
        await self._progress(
            run, 0, 0, f"Searching for {config.business_type} in {config.location}"
        )
        page = await self._search(run, min(SEARCH_MAX, max(SEARCH_MIN, 2 * config.max_results)))
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

    async def _search(self, run: _Run, limit: int) -> SearchPage:
        """Up to ``limit`` places, in no more pages than the budget still pays for.

        Each billed search call (a page) returns up to ``page_size`` places: the pages'
        price is reserved in the job's ledger before the search, fewer pages when the
        budget left cannot pay them all. Raises PermanentProviderError when it cannot
        pay one."""
        config, places = run.task.config, self._providers.places
        price = usd_to_micros(places.price("text_search"))
        pages = math.ceil(limit / places.page_size)
        cap = run.allowance.cap_micros
        if cap and price:
            if price > cap:
                raise PermanentProviderError(
                    places.name,
                    f"budget_limit ${config.budget_limit:.2f} is below the price of one search "
                    f"(${places.price('text_search'):.3f})",
                )
            pages = min(pages, cap // price)
        for n in range(pages, 0, -1):
            search = functools.partial(
                places.search,
                config.business_type,
                config.location,
                min(limit, n * places.page_size),
            )
            page = await run.allowance.spend(n * price, search, lambda page: page.charges)
            if page is not None:
                return page
        raise PermanentProviderError(
            places.name,
            f"budget_limit ${config.budget_limit:.2f} was spent by earlier tries of this "
            "discovery: nothing left for a search",
        )

    async def _details(self, run: _Run, place_ids: list[str]) -> list[PlaceDetails]:
        """Details for each place, a bounded number at a time, within the budget."""
        places = self._providers.places
        gate = asyncio.Semaphore(self._settings.details_concurrency)
        results: dict[str, PlaceDetails] = {}

        async def one(place_id: str) -> None:
            async with gate:
                self._check_cancelled(run)
                price = usd_to_micros(places.details_price(place_id))
                call = functools.partial(places.details, place_id)
                result = await run.allowance.spend(price, call, lambda result: result.charges)
                if result is None:
                    return  # over budget: this place goes unscored
                run.charge(result.charges)
                results[place_id] = result.details

        outcomes = await asyncio.gather(*(one(p) for p in place_ids), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [results[p] for p in place_ids if p in results]


def main() -> None:
    worker_main(DiscoveryWorker)
