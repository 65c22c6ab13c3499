"""Discovery worker: text search, details per place, scoring and qualification.

One task per job. Reports go to the jobs service as they happen (search started: 0; search
done: 10; details done: 30, these two left out when they would follow the previous report
within PROGRESS_MIN_INTERVAL_S; the qualified places). Paid requests are on the books as
they leave (their intents, see metering), so every billable call is accounted for whatever
happens next; what they billed, and the sandbox's charges, travel in the delivery's last
report only (its result, failure or stop, or the charges it reports before handing its
task back), never in a progress report. The last report is the one the job waits for: once
it is applied the job may end at once, and a progress report held up on the bus (left
unacknowledged by a jobs replica that died or gave up its partition, and redelivered)
could arrive after that, when a final job refuses its money.

With a budget (``budget_limit_micros``), every paid call of the job's discovery goes
through the shared ledger ``job.<job_id>`` (services/common/allowance.py): a redelivered or
retried discovery spends only what earlier tries left of the budget.

Every delivery and attempt of a job's discovery shares what its predecessors got (the
job's memo, services/discovery/memo.py) and pays only for what it lacks; one with nothing
left to pay for scores and reports at once. Paid calls are made by one delivery at a time,
the holder of the job's lease: another that finds it held comes back later (a nak with a
delay), when the memo is complete or the lease expired with its holder.
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
from nats.js.kv import KeyValue

from prospect.v1 import jobs_pb2, work_pb2
from services.common import bus
from services.common.allowance import Allowance
from services.common.errors import PermanentProviderError, ProviderError
from services.common.money import exact_micros, micros_to_usd, usd_to_micros
from services.common.plan import SEARCH_MAX, SEARCH_MIN
from services.common.providers import Charge, SearchPage
from services.common.providers.metering import Meter, WorkStopped
from services.common.settings import Settings
from services.common.worker import (
    TaskWorker,
    add_charges,
    publish_report,
    retry_delay,
    worker_main,
)
from services.discovery.memo import DiscoveryBusy, Lease, Memo, hold_lease, to_place
from services.discovery.scoring import qualify, score_place

log = logging.getLogger(__name__)

# A progress report this soon after the previous report is left out (its charges travel on
# the next one): with providers answering in milliseconds, nobody watching sees the step,
# and every report is a transaction for the jobs service.
PROGRESS_MIN_INTERVAL_S = 0.1


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
    _discoveries: KeyValue  # every job's memo and lease (opened by start)

    @classmethod
    def concurrency(cls, settings: Settings) -> int:
        return settings.discovery_concurrency

    def delivery_id(self, task: work_pb2.DiscoveryTask, delivery: int) -> str:
        return f"discovery.{task.job_id}.{task.attempt}.{delivery}"

    def provider_names(self) -> dict[str, str]:
        return {"places": self._providers.places.name}

    async def start(self) -> None:
        await super().start()
        self._discoveries = await bus.open_bucket(self._js, bus.DISCOVERY_BUCKET)

    async def _report(self, run: _Run, what: str, *, last: bool = True, **body: Message) -> None:
        """Publish the report ``what`` with ``body`` (its oneof field by name); the
        delivery's ``last`` report carries every charge and intent not reported yet (see
        the module's docstring)."""
        report = self.new_report(run.task, run.next_report_id(what))
        for name, message in body.items():
            getattr(report, name).CopyFrom(message)
        if last:
            add_charges(report, run.meter, run.unreported)
            run.unreported = []
        await publish_report(self._js, report)
        run.last_report = time.monotonic()

    async def _report_charges(self, run: _Run, note: str) -> None:
        """Report the calls made and not reported yet, if any: the delivery ends without
        its result (its task is handed back, to be tried again)."""
        if run.unreported or run.meter.pending:
            await self._report(run, "charges", charges_only=work_pb2.ChargesOnly(note=note))

    def _check_cancelled(self, run: _Run) -> None:
        if self._cancels.is_cancelled(run.task.job_id):
            raise WorkStopped("discovery stopped: the job is cancelled or failed")

    async def run(self, task: work_pb2.DiscoveryTask, msg: Msg) -> None:
        delivery = msg.metadata.num_delivered
        prefix = self.delivery_id(task, delivery)
        # The exact form; a task queued before it existed carries only the double.
        cap = exact_micros(task.config.budget_limit_micros, task.config.budget_limit)
        budget = self.allowance(f"job.{task.job_id}", cap)
        run = _Run(task, prefix, delivery, self.start_meter(task, prefix), budget)
        try:
            await self._discover_alone(run)
        except DiscoveryBusy as busy:
            # Another delivery is paying for this job's discovery: come back when it is
            # done (the memo then holds everything) or gone (its lease expired).
            await self._report_charges(run, f"Discovery paused ({busy}); retrying")
            log.info("%s: %s; again in %.1fs", prefix, busy, busy.retry_after)
            await msg.nak(delay=busy.retry_after)
            self.task_ended("retried")
            return
        except WorkStopped:
            # The job waits for this word before it ends; it carries what was spent.
            note = "Discovery stopped: the job is stopped"
            await self._report(run, "stopped", task_stopped=work_pb2.TaskStopped(note=note))
            await msg.ack()
            self.task_ended("cancelled")
            return
        except ProviderError as exc:
            final = not exc.retryable or run.delivery >= self._settings.max_deliver
            if final:
                # The one line of this task's failure (the job's own comes from the jobs
                # service): never the key, which adapters keep out of every error.
                log.warning(
                    "discovery failed on delivery %d: %s", run.delivery, exc,
                    extra={"provider": exc.provider, "error": type(exc).__name__},
                )  # fmt: skip
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
                self.task_ended("failed")
            else:
                await self._report_charges(run, f"Discovery interrupted ({exc}); retrying")
                await msg.nak(delay=exc.retry_after or retry_delay(run.delivery))
                self.task_ended("retried")
            return
        await msg.ack()
        self.task_ended("done")

    async def _progress(self, run: _Run, progress: int, found: int, message: str) -> None:
        if run.reports and time.monotonic() - run.last_report < PROGRESS_MIN_INTERVAL_S:
            return
        await self._report(
            run,
            "progress",
            last=False,
            discovery_progress=work_pb2.DiscoveryProgress(
                stage=jobs_pb2.STAGE_DISCOVERING,
                progress=progress,
                businesses_found=found,
                message=message,
            ),
        )

    async def _discover_alone(self, run: _Run) -> None:
        """:meth:`_discover`, retried in place while another delivery holds the lease when
        this is the task's last delivery: JetStream would not deliver it again after a
        nak, and the task's heartbeats keep it meanwhile. Raises DiscoveryBusy on any
        other delivery."""
        while True:
            try:
                await self._discover(run)
                return
            except DiscoveryBusy as busy:
                if run.delivery < self._settings.max_deliver:
                    raise
                # What it spent so far goes with its last report (its intents are on the books).
                log.info("%s: %s; last delivery, waiting %.1fs", run.prefix, busy, busy.retry_after)
                await asyncio.sleep(busy.retry_after)
                self._check_cancelled(run)

    async def _discover(self, run: _Run) -> None:
        """Report the job's qualified places, paying only for what its memo lacks; any try
        but the first holds the job's lease while paying. Raises DiscoveryBusy when another
        delivery holds the lease."""
        job_id = run.task.job_id
        if not self._providers.places.billed:
            # Simulated calls bill nobody: nothing to pay twice, so no memo and no lease.
            memo = Memo(None, job_id)
            await self._pay_for_lacking(run, memo, None)
        else:
            memo = await self._lacking_paid_alone(run)
        await self._report_result(run, memo)

    async def _lacking_paid_alone(self, run: _Run) -> Memo:
        """The job's memo, with what it lacked paid for under the job's lease (none of it
        when it was complete). Raises DiscoveryBusy when another delivery holds the lease."""
        job_id = run.task.job_id
        # The first try finds nothing to read (a try that runs beside it, its task
        # redelivered while it seemed dead, waits for its lease and reads what it saved).
        first_try = run.task.attempt <= 1 and run.delivery == 1
        memo = Memo(self._discoveries, job_id)
        if not first_try:
            memo = await Memo.load(self._discoveries, job_id)
        if not memo.complete:
            ttl = self._settings.ack_wait_s  # renewed alongside the task's heartbeats
            async with hold_lease(self._discoveries, job_id, run.prefix, ttl) as lease:
                # What the delivery that held the lease before saved until it let go.
                memo = await Memo.load(self._discoveries, job_id)
                await self._pay_for_lacking(run, memo, lease)
        return memo

    async def _report_result(self, run: _Run, memo: Memo) -> None:
        config = run.task.config
        # Places the job's schedule already delivered (only_new_leads): left out, counted.
        known = set(run.task.known_place_ids)
        details = [d for d in memo.details() if d.place_id not in known]
        scored = [(d, score_place(d, config.business_type)) for d in details]
        kept = qualify(scored, config.min_confidence_score, config.max_results)
        await self._report(
            run,
            "result",
            discovery_result=work_pb2.DiscoveryResult(
                businesses_found=len(memo.found),
                qualified=[to_place(d, s) for d, s in kept],
                skipped_known=sum(p.place_id in known for p in memo.found),
            ),
        )
        log.info("discovery done: %d businesses found, %d qualified", len(memo.found), len(kept))

    async def _pay_for_lacking(self, run: _Run, memo: Memo, lease: Lease | None) -> None:
        """The search, unless the memo has it, then the details the memo lacks; each
        answer goes into the memo."""
        config, places = run.task.config, self._providers.places
        if not memo.searched:
            await self._progress(
                run, 0, 0, f"Searching for {config.business_type} in {config.location}"
            )
            if lease is not None:
                lease.check()
            page = await self._search(run, min(SEARCH_MAX, max(SEARCH_MIN, 2 * config.max_results)))
            run.charge(page.charges)
            memo.note_search(page.places)
            # The details the search page carried cost nothing: saved with the search, so
            # a delivery that comes after this one has them too.
            free = [p.place_id for p in page.places if not places.details_price(p.place_id)]
            await self._details(run, memo, lease, free)
            found = len(memo.found)
            await self._progress(run, 10, found, f"Found {found} businesses")
        known = set(run.task.known_place_ids)  # never paid for again (only_new_leads)
        lacking = [p for p in memo.lacking() if p not in known]
        if lacking:
            await self._details(run, memo, lease, lacking)
            found, detailed = len(memo.found), len(memo.details())
            await self._progress(run, 30, found, f"Fetched details for {detailed} businesses")

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
                    f"budget_limit ${micros_to_usd(cap):.2f} is below the price of one search "
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
            f"budget_limit ${micros_to_usd(cap):.2f} was spent by earlier tries of this "
            "discovery: nothing left for a search",
        )

    async def _details(
        self, run: _Run, memo: Memo, lease: Lease | None, place_ids: list[str]
    ) -> None:
        """Details of each place into the memo, a bounded number at a time, within the
        budget (a place the budget cannot pay for stays without). The memo is saved after
        each paid answer and on the way out."""
        places = self._providers.places
        gate = asyncio.Semaphore(self._settings.details_concurrency)

        async def one(place_id: str) -> None:
            async with gate:
                self._check_cancelled(run)
                if lease is not None:
                    lease.check()
                price = usd_to_micros(places.details_price(place_id))
                call = functools.partial(places.details, place_id)
                result = await run.allowance.spend(price, call, lambda result: result.charges)
                if result is None:
                    return  # over budget: this place goes unscored
                run.charge(result.charges)
                memo.note_details(result.details)
            if any(c.metered for c in result.charges):  # billed by a real provider: kept
                await memo.save()  # out of the gate: the next call need not wait for it

        try:
            outcomes = await asyncio.gather(*(one(p) for p in place_ids), return_exceptions=True)
        finally:
            await memo.save()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


def main() -> None:
    worker_main(DiscoveryWorker)
