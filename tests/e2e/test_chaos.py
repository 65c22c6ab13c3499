"""Chaos: a few dozen campaigns from several users against the fake providers while a
seeded random schedule kill -9s every kind of process (jobs replicas included), kills and
restarts nats-server, SIGTERMs a worker and takes every worker of one kind away for longer
than the stall timeout; then every invariant of the failure semantics is checked against
the API, the database and the fakes' own bills.

Replay a run with ``CHAOS_SEED=<seed>`` (printed first, and in every failure). Runs on
PostgreSQL with two jobs replicas when TEST_DATABASE_URL is set (the schema is reset),
else on SQLite with one.

How much books and bill may differ: a worker killed with calls under way leaves their
accounting to what it had reported. So each crash *exposes* the fakes' requests that came
from the dead process's TCP ports (every process, for nats-server) and were unanswered at
the crash or answered less than ``IN_FLIGHT_LAG_S`` before it. A job may differ from its bill
by its exposed requests times the highest list price, and by nothing when none was
exposed; the sum over jobs by the sum of those. One more call is the only thing the fakes
cannot see: a process that died after putting a call on the books and before sending it.
So each crash lends ``CHAOS_UNSEEN_SLACK`` (default 1; 0 for the strict bound) such call
to one job that had calls at the fakes within ``UNSEEN_AROUND_S`` of it and whose books are
above its bill by at most that one call; every loan is printed.
``every_domain_has_emails`` makes every successful call cost its list price, so a call's
answer never changes what it costs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2
from services.cli.client import is_terminal
from tests.e2e.chaos import (
    Api,
    Chaos,
    ChaosStack,
    Fault,
    Rows,
    WatchLog,
    consumer_backlogs,
    exposed,
    read_database,
    reset_postgres,
    watch_job,
)
from tests.e2e.tokens import claims, hs256
from tests.fakes import FakeProviders, FakeServer, RequestRecord

pytestmark = pytest.mark.e2e

CAMPAIGNS = 40
USERS = ("alice", "bob", "carol")
CANCELS = 7
SUBMIT_SPAN_S = 20.0  # submits spread over this long
CHAOS_SPAN_S = 26.0  # faults fall in this long
TERMINAL_WITHIN_S = 90.0  # after the last fault, every job must be terminal within this
ACK_WAIT_S = 2.0
STALL_TIMEOUT_S = 8.0
STOP_TIMEOUT_S = 5.0
SHUTDOWN_GRACE_S = 3.0
STARTED_BY_S = 1.0  # a request arriving this long after the cancel's answer started after it
CANCEL_FINISH_SLACK_S = 10.0  # CANCELLING to CANCELLED: STOP_TIMEOUT_S plus this
ARRIVAL_GRACE_S = 1.0  # a dead process's request may reach a fake this late
IN_FLIGHT_LAG_S = 0.2  # an answer this recent may not have been read: still in flight
ANSWER_LAG_S = 1.0  # an answer this recent may not have been cached yet
DISCOVERY_REDO_S = 5.0  # a discovery task killed this long after a call may make it again
UNSEEN_AROUND_S = 3.0  # a job with calls this near a crash may have lost one unseen call
MAX_PRICE_MICROS = 35_000  # the highest list price of one call (a Text Search page)
# What one call costs, by the kind of process that makes it (every_domain_has_emails: the
# fakes bill each successful call its list price).
LIST_PRICES_MICROS = {"discovery": (35_000, 20_000), "enrichment": (24_500, 8_000)}
ALL_LIST_PRICES = (35_000, 20_000, 24_500, 8_000)
ENRICHMENT_OPS = ("domain_search", "email_finder", "single_check")
PROVIDERS = ("google_places", "hunter", "neverbounce")

CANCELLING = getattr(jobs_pb2, "JOB_STATUS_CANCELLING", 6)
FAILING = getattr(jobs_pb2, "JOB_STATUS_FAILING", 7)
STOPPING_TO = {CANCELLING: jobs_pb2.JOB_STATUS_CANCELLED, FAILING: jobs_pb2.JOB_STATUS_FAILED}


def service_env(jwt_secret: str) -> dict[str, str]:
    env = {
        "ACK_WAIT_S": str(ACK_WAIT_S),
        "STALL_TIMEOUT_S": str(STALL_TIMEOUT_S),
        "STOP_TIMEOUT_S": str(STOP_TIMEOUT_S),
        # Both jobs replicas apply reports, and partitions move at every kill of one.
        "REPORT_PARTITIONS": "4",
        "SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        "MAX_DELIVER": "10",
        "JOB_MAX_ATTEMPTS": "3",
        "PROVIDER_MAX_ATTEMPTS": "3",
        "OUTBOX_POLL_S": "0.5",
        "DISCOVERY_CONCURRENCY": "2",
        "ENRICHMENT_CONCURRENCY": "4",
        "MAX_ACTIVE_JOBS_PER_USER": "100",
        "MAX_WATCHES_PER_USER": "100",
        "AUTH_MODE": "jwt",
        "AUTH_JWT_SECRET": jwt_secret,
        "PAGE_TOKEN_SECRET": secrets.token_hex(32),
    }
    for name in ("GOOGLE_PLACES", "HUNTER", "NEVERBOUNCE"):
        env[f"RATE_LIMIT_{name}_RPS"], env[f"RATE_LIMIT_{name}_BURST"] = "50", "10"
    return env


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


def status_name(status: int) -> str:
    try:
        return jobs_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")
    except ValueError:
        return str(status)


def describe(job: jobs_pb2.Job) -> str:
    m = job.metrics
    return (
        f"{status_name(job.status)}/{jobs_pb2.Stage.Name(job.stage)} v{job.version} "
        f"attempts={job.attempts} leads={m.leads_enriched}/{m.qualified_leads} "
        f"cost={micros(m.total_cost)}µ$ error={job.error!r}"
    )


# -- the plan -------------------------------------------------------------------------------


@dataclass
class Cancel:
    sent_at: float
    answered_at: float = 0.0
    outcome: str = ""  # "accepted", or the gRPC code it got
    tries: int = 0
    answer: jobs_pb2.Job | None = None


@dataclass(frozen=True)
class CancelPlan:
    """Cancel once the job is ``when`` ("submitted", "discovering", or "enriching" with at
    least ``leads`` leads done), ``delay_s`` later; or once it ended, whatever comes first."""

    when: str
    leads: int
    delay_s: float

    def due(self, job: jobs_pb2.Job | None) -> bool:
        if self.when == "submitted" or job is None:
            return self.when == "submitted"
        if is_terminal(job.status):
            return True
        if self.when == "discovering":
            return job.status == jobs_pb2.JOB_STATUS_PROCESSING
        return job.stage >= jobs_pb2.STAGE_ENRICHING and job.metrics.leads_enriched >= self.leads


@dataclass
class Campaign:
    n: int
    user: str
    config: jobs_pb2.CampaignConfig
    submit_at: float  # seconds after the start
    cancel_plan: CancelPlan | None
    job_id: str = ""
    cancel: Cancel | None = None

    @property
    def query(self) -> str:
        """The text query the Google adapter sends: the fakes bill the job under it."""
        return f"{self.config.business_type} in {self.config.location}"

    def __str__(self) -> str:
        budget = f" budget=${self.config.budget_limit:g}" if self.config.budget_limit else ""
        return f"#{self.n} {self.job_id or '(unsubmitted)'} {self.query!r} {self.user}{budget}"


def plan_campaigns(rng: random.Random, seed: int) -> list[Campaign]:
    """A third without a budget, a third with one that binds after a few leads, a third
    with a generous one; some cancelled a random moment after their submit."""
    cancelled = set(rng.sample(range(CAMPAIGNS), CANCELS))
    out = []
    for n in range(CAMPAIGNS):
        budget = (0.0, round(0.035 + rng.randint(1, 3) * 0.0325 + 0.005, 4), 2.0)[n % 3]
        config = jobs_pb2.CampaignConfig(
            business_type=rng.choice(("bakery", "coffee shop", "dentist", "plumber")),
            location=f"Chaosville {seed} {n}",
            max_results=rng.randint(3, 10),
            min_confidence_score=rng.choice((0, 0, 30)),
            budget_limit=budget,
            verify_emails=rng.random() < 0.8,
        )
        plan = None
        if n in cancelled:
            when = rng.choice(("submitted", "discovering", "enriching", "enriching"))
            plan = CancelPlan(when, rng.randint(1, 2), rng.uniform(0.0, 0.3))
        submit_at = rng.uniform(0.0, SUBMIT_SPAN_S)
        out.append(Campaign(n, USERS[n % len(USERS)], config, submit_at, plan))
    return out


def plan_faults(rng: random.Random, cs: ChaosStack) -> list[Fault]:
    """kill -9 each process once and a few at random, nats-server once, SIGTERM one worker,
    and every worker of one kind away for longer than the stall timeout."""
    jobs = cs.labels("jobs")
    workers = cs.labels("discovery") + cs.labels("enrichment")
    targets = jobs + workers + [rng.choice(jobs + workers) for _ in range(5)]
    # jobs replicas while submits and watches are busiest
    faults = [Fault(rng.uniform(2.0, SUBMIT_SPAN_S if t in jobs else CHAOS_SPAN_S), "kill", t,
                    rng.uniform(0.3, 2.0)) for t in targets]  # fmt: skip
    faults.append(Fault(rng.uniform(8.0, 22.0), "nats", "nats-server", rng.uniform(0.5, 2.0)))
    faults.append(Fault(rng.uniform(3.0, CHAOS_SPAN_S), "sigterm", rng.choice(workers), 1.0))
    kind = rng.choice(("discovery", "enrichment"))
    faults.append(Fault(rng.uniform(6.0, 16.0), "outage", kind, 1.5 * STALL_TIMEOUT_S))
    return sorted(faults, key=lambda f: f.at)


# -- the run --------------------------------------------------------------------------------


async def submit(api: Api, c: Campaign, seed: int) -> None:
    request = jobs_pb2.SubmitCampaignRequest(config=c.config, idempotency_key=f"chaos-{seed}-{c.n}")
    response = await api.call(c.user, "SubmitCampaign", request)
    c.job_id = response.job_id


async def cancel_when_due(api: Api, c: Campaign, log: WatchLog) -> None:
    plan = c.cancel_plan
    assert plan is not None
    while not (log.over or plan.due(log.latest)):
        log.changed.clear()
        await log.changed.wait()
    await asyncio.sleep(plan.delay_s)
    c.cancel = cancel = Cancel(sent_at=time.monotonic())
    try:
        request = jobs_pb2.CancelJobRequest(job_id=c.job_id)
        cancel.answer = await api.call(c.user, "CancelJob", request)
        cancel.outcome = "accepted"
    except grpc.aio.AioRpcError as err:
        cancel.outcome = err.code().name
    cancel.answered_at = time.monotonic()
    cancel.tries = api.tries()


async def drive(
    api: Api, chaos: Chaos, faults: list[Fault], campaigns: list[Campaign], seed: int
) -> dict[str, WatchLog]:
    """Submit, watch and cancel the campaigns while the faults happen; return when every
    watcher has seen its job terminal (or TERMINAL_WITHIN_S after the last fault)."""
    logs: dict[str, WatchLog] = {}
    tasks: list[asyncio.Task[None]] = []
    t0 = time.monotonic()

    async def campaign_life(c: Campaign) -> None:
        await asyncio.sleep(c.submit_at)
        await submit(api, c, seed)
        logs[c.job_id] = log = WatchLog(c.job_id, c.user)
        within = CHAOS_SPAN_S + TERMINAL_WITHIN_S + 60.0
        watcher = asyncio.create_task(watch_job(api, log, within))
        try:
            if c.cancel_plan is not None:
                await cancel_when_due(api, c, log)
            await watcher
        finally:
            watcher.cancel()

    try:
        tasks = [asyncio.create_task(campaign_life(c)) for c in campaigns]
        await chaos.run(faults, t0)
        await chaos.settle()
        chaos.note("last fault over; every process running")
        done, pending = await asyncio.wait(tasks, timeout=TERMINAL_WITHIN_S)
        for task in done:
            task.result()  # a harness error (a submit that kept failing...) surfaces here
        chaos.note(f"{len(pending)} job(s) not terminal {TERMINAL_WITHIN_S:.0f}s later")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await chaos.abort()
    return logs


# -- the checks -----------------------------------------------------------------------------


@dataclass
class Final:
    """One campaign at the end: the API's job and leads, the watcher's record."""

    c: Campaign
    job: jobs_pb2.Job
    leads: list[jobs_pb2.Lead]
    log: WatchLog


class Checker:
    """Collects one line per broken invariant, naming the job and the numbers."""

    def __init__(self, seed: int, fakes: FakeProviders, chaos: Chaos) -> None:
        self.seed = seed
        self.fakes = fakes
        self.t0 = chaos.t0
        crashes = chaos.crashes
        self.crashes = [c for c in crashes if c.kind != "jobs"]
        self.problems: list[str] = []
        self.broken: Counter[str] = Counter()  # problems per invariant
        self.cancels: list[str] = []
        self.notes: list[str] = []
        exposure = exposed(
            crashes, fakes, arrival_grace_s=ARRIVAL_GRACE_S, answer_lag_s=IN_FLIGHT_LAG_S
        )
        self.exposed = Counter(fake.job_of_request(req) for _, fake, req in exposure)
        per_crash = int(os.environ.get("CHAOS_UNSEEN_SLACK", "1"))
        self.unseen = {(c.label, c.at): per_crash for c in self.crashes}
        self.unseen_used = 0
        self.bills = defaultdict(list)  # job key -> [(fake, Bill)]
        for fake in fakes.fakes:
            for bill in fake.operations:
                self.bills[bill.job_key].append((fake, bill))
        self.requests = {(f.name, r.seq): r for f in fakes.fakes for r in f.requests}

    def fail(self, invariant: str, f: Final | None, detail: str) -> None:
        where = f" job {f.c} [{describe(f.job)}]" if f is not None else ""
        self.problems.append(f"[seed={self.seed}] {invariant}:{where}: {detail}")
        self.broken[invariant] += 1

    def bill_micros(self, key: str, provider: str | None = None) -> int:
        return sum(b.price_micros for fake, b in self.bills[key] if provider in (None, fake.name))

    def check(self, f: Final, rows: Rows) -> None:
        self.terminal(f)
        self.watch(f)
        self.books(f)
        self.budget(f)
        self.leads(f)
        self.database(f, rows)
        self.cancellation(f)
        self.paid_twice(f)

    def terminal(self, f: Final) -> None:
        if not is_terminal(f.job.status):
            self.fail("stuck", f, f"not terminal {TERMINAL_WITHIN_S:.0f}s after the last fault")

    def watch(self, f: Final) -> None:
        for problem in f.log.problems:
            self.fail("watch", f, problem)
        statuses = [job.status for _, job in f.log.updates]
        for a, b in itertools.pairwise(statuses):
            if a in STOPPING_TO and b not in (a, STOPPING_TO[a]):
                self.fail("stopping", f, f"went {status_name(a)} -> {status_name(b)}")
        t = f.log.terminal
        if t is None:
            if is_terminal(f.job.status):
                self.fail("watch", f, f"no terminal snapshot in {len(f.log.updates)} updates")
            return
        fixed = lambda j: (j.version, j.status, j.stage, j.progress, j.error,  # noqa: E731
                           j.metrics.SerializeToString(deterministic=True))  # fmt: skip
        if fixed(t) != fixed(f.job):
            self.fail("terminal-final", f, f"the watcher saw it end as [{describe(t)}]")
        sig = lambda leads: sorted(  # noqa: E731
            (x.id, x.place_id, x.email, x.email_status, micros(x.cost)) for x in leads
        )
        if f.log.terminal_leads is not None and sig(f.log.terminal_leads) != sig(f.leads):
            before, after = set(sig(f.log.terminal_leads)), set(sig(f.leads))
            self.fail(
                "terminal-final", f, f"leads changed after the terminal snapshot: "
                f"gone {sorted(before - after)[:3]}, new {sorted(after - before)[:3]}"
            )  # fmt: skip

    def allowance(self, f: Final, books: int, bill: int) -> tuple[int, str]:
        """How far ``books`` may be from ``bill`` for this job (micro-dollars), and why.

        The requests crashes exposed, at the highest list price each. Then, if that is not
        enough: one *unseen* call (put on the books, never sent: the process died in
        between), when the books are above the bill by exactly the list price of a call
        the dead process could make (beyond what exposed calls cover), the job had calls
        at the fakes within UNSEEN_AROUND_S of the crash, and the crash has not lent its
        unseen call to another job.
        """
        exposed = self.exposed[f.c.query]
        allowed = exposed * MAX_PRICE_MICROS
        why = f"{exposed} call(s) exposed by crashes allow {allowed}µ$"
        excess = books - bill
        if abs(excess) <= allowed or excess <= 0:
            return allowed, why
        stamps = [r.ts for _, r in self.fakes.requests_for(f.c.query)]
        for crash in self.crashes:
            prices = LIST_PRICES_MICROS.get(crash.kind, ALL_LIST_PRICES)
            fits = any(0 <= excess - p <= allowed for p in prices)
            near = any(abs(t - crash.at) <= UNSEEN_AROUND_S for t in stamps)
            if fits and near and self.unseen[crash.label, crash.at] > 0:
                self.unseen[crash.label, crash.at] -= 1
                self.unseen_used += 1
                return allowed + max(prices), f"{why}, plus one unseen call ({crash.label} " \
                    f"killed at t+{crash.at - self.t0:.2f}s)"  # fmt: skip
        return allowed, why

    def books(self, f: Final) -> None:
        books, bill = micros(f.job.metrics.total_cost), self.bill_micros(f.c.query)
        seen = f.log.terminal
        seen_books = micros(seen.metrics.total_cost) if seen is not None else books
        allowed, why = self.allowance(f, max(books, seen_books), bill)
        if "unseen" in why:
            self.notes.append(f"job {f.c}: books {books}µ$, bill {bill}µ$: {why}")
        if seen is not None and abs(seen_books - bill) > allowed:
            self.fail(
                "terminal-books", f, f"the terminal snapshot v{seen.version} says "
                f"{seen_books}µ$, the bill is {bill}µ$ ({why})"
            )  # fmt: skip
        if abs(books - bill) <= allowed:
            return
        per_provider = ", ".join(
            f"{p} {micros(f.job.metrics.cost_by_provider.get(p, 0.0))}/"
            f"{self.bill_micros(f.c.query, p)}"
            for p in PROVIDERS
        )
        self.fail(
            "books-vs-bill", f, f"books {books}µ$ vs bill {bill}µ$ (diff {books - bill:+d}), "
            f"{why}; per provider books/bill: {per_provider}"
        )  # fmt: skip

    def budget(self, f: Final) -> None:
        limit = micros(f.c.config.budget_limit)
        books, bill = micros(f.job.metrics.total_cost), self.bill_micros(f.c.query)
        if limit and (books > limit or bill > limit):
            self.fail("budget", f, f"limit {limit}µ$, books {books}µ$, bill {bill}µ$")

    def leads(self, f: Final) -> None:
        places = Counter(lead.place_id for lead in f.leads)
        twice = {p: n for p, n in places.items() if n > 1}
        if twice:
            self.fail("unique-leads", f, f"places stored more than once: {twice}")

    def database(self, f: Final, rows: Rows) -> None:
        row = rows.jobs.get(f.job.id)
        if row is None:
            self.fail("database", f, "no job row")
            return
        api = (status_name(f.job.status), f.job.version, micros(f.job.metrics.total_cost))
        db = (row["status"], row["version"], row["metrics"].get("total_cost_micros"))
        if api != db:
            self.fail("database", f, f"job row (status, version, cost) {db} != API {api}")
        campaigns = rows.campaigns.get(f.job.id, [])
        if len(campaigns) != 1 or campaigns[0]["total_cost_micros"] != db[2]:
            costs = [(c["status"], c["total_cost_micros"]) for c in campaigns]
            self.fail("database", f, f"campaign rows (status, cost) {costs} != job cost {db[2]}")
        leads = rows.leads.get(f.job.id, [])
        db_places = Counter((lead["campaign_id"], lead["place_id"]) for lead in leads)
        if any(n > 1 for n in db_places.values()):
            self.fail("unique-leads", f, f"{len(leads)} lead rows, {len(db_places)} places")
        lead_sum = sum(lead["cost_micros"] for lead in leads)
        if leads and lead_sum != db[2]:
            self.fail("database", f, f"lead costs add up to {lead_sum}µ$, job cost {db[2]}µ$")
        api_leads = sorted((x.id, micros(x.cost), x.email) for x in f.leads)
        db_leads = sorted((x["id"], x["cost_micros"], x["email"]) for x in leads)
        if api_leads != db_leads:
            self.fail("database", f, f"{len(db_leads)} lead rows differ from {len(api_leads)}")

    def cancellation(self, f: Final) -> None:
        """An accepted cancel: answered at once, CANCELLING or CANCELLED then, CANCELLED
        within STOP_TIMEOUT_S (and some slack), and no request for the job after the answer
        beyond the calls under way when it was sent (and one that had passed its check)."""
        cancel = f.c.cancel
        if cancel is None or not cancel.answered_at:
            return
        mine = [(fake, r) for fake in self.fakes.fakes for r in fake.requests
                if fake.job_of_request(r) == f.c.query]  # fmt: skip
        under_way = sum(
            1 for fake, r in mine
            if r.ts <= cancel.answered_at
            and (fake.answered_at(r.seq) or float("inf")) >= cancel.sent_at
        )  # fmt: skip
        after = sorted(r.ts - cancel.answered_at for _, r in mine if r.ts > cancel.answered_at)
        took_s = cancel.answered_at - cancel.sent_at
        self.cancels.append(
            f"{f.c}: {cancel.outcome} in {took_s:.3f}s after {cancel.tries} try(ies), "
            f"{under_way} call(s) under way, {len(after)} after the answer"
        )
        if cancel.outcome != "accepted" or cancel.answer is None:
            return  # refused: the job had ended already
        # No paid call starts after the answer. A request whose worker checked the job
        # just before the stop notice reached it may still arrive a moment after the
        # answer (it was on its way); one arriving STARTED_BY_S later started after it.
        late = [t for t in after if t > STARTED_BY_S]
        if late:
            self.fail(
                "cancel", f, f"{len(after)} request(s) after the cancel's answer (at "
                f"+{', +'.join(f'{t:.2f}s' for t in after[:8])}), {under_way} under way at it"
            )  # fmt: skip
        answer = cancel.answer.status
        if answer == FAILING:
            return  # failing already: it ends FAILED, and stops paid calls all the same
        if answer not in (CANCELLING, jobs_pb2.JOB_STATUS_CANCELLED):
            self.fail("cancel", f, f"CancelJob answered {status_name(answer)}")
        if f.job.status != jobs_pb2.JOB_STATUS_CANCELLED:
            self.fail("cancel", f, "accepted cancel, but the job did not end CANCELLED")
        took = f.log.terminal_at - cancel.answered_at if f.log.terminal else 0.0
        if took > STOP_TIMEOUT_S + CANCEL_FINISH_SLACK_S:
            self.fail("cancel", f, f"terminal {took:.1f}s after the cancel's answer")

    def paid_twice(self, f: Final) -> None:
        """Each thing bought twice for the job must be explained by a crash that could
        have lost the first purchase (its answer not yet reported or cached)."""
        by_subject = defaultdict(list)
        for fake, bill in self.bills[f.c.query]:
            if bill.price_micros > 0 and bill.subject:
                by_subject[(fake, bill.subject)].append(bill)
        for (fake, subject), bills in by_subject.items():
            bills.sort(key=lambda b: b.ts)
            for first, again in itertools.pairwise(bills):
                req = self.requests.get((fake.name, first.request_seq))
                if req is not None and self.lost(fake, req, first.operation):
                    continue
                port = req.client_port if req else "?"
                self.fail(
                    "paid-twice", f, f"{subject} billed at t+{first.ts - self.t0:.2f}s (port "
                    f"{port}) and again at t+{again.ts - self.t0:.2f}s; no crash explains the "
                    "first one being lost"
                )  # fmt: skip

    def lost(self, fake: FakeServer, req: RequestRecord, operation: str) -> bool:
        horizon = ANSWER_LAG_S if operation in ENRICHMENT_OPS else DISCOVERY_REDO_S
        answered = fake.answered_at(req.seq) or float("inf")
        for crash in self.crashes:
            latest = crash.at + ARRIVAL_GRACE_S
            if crash.kind == "nats":  # heartbeats lost: tasks redelivered while running
                latest = max(latest, (crash.back_at or crash.at) + 2 * ACK_WAIT_S + 1.0)
            if crash.from_process(req) and req.ts <= latest and answered >= crash.at - horizon:
                return True
        return False

    def global_books(self, finals: list[Final]) -> None:
        total = sum(abs(micros(f.job.metrics.total_cost) - self.bill_micros(f.c.query))
                    for f in finals)  # fmt: skip
        calls = sum(self.exposed.values()) + self.unseen_used
        if total > calls * MAX_PRICE_MICROS:
            self.fail(
                "books-vs-bill", None, f"sum over jobs of |books - bill| = {total}µ$ > "
                f"{calls * MAX_PRICE_MICROS}µ$ ({sum(self.exposed.values())} exposed and "
                f"{self.unseen_used} unseen call(s))"
            )  # fmt: skip


# -- the test -------------------------------------------------------------------------------


def summary(seed: int, chaos: Chaos, finals: list[Final], fakes: FakeProviders) -> str:
    statuses = Counter(status_name(f.job.status) for f in finals)
    requests = sum(len(fake.requests) for fake in fakes.fakes)
    lines = [
        f"seed {seed} (replay: CHAOS_SEED={seed})",
        f"jobs: {dict(statuses)}; fakes: {requests} requests, "
        f"{micros(fakes.total_billed())}µ$ billed",
        f"crashes: {len(chaos.crashes)} "
        f"({', '.join(f'{c.label}:{c.in_flight}' for c in chaos.crashes)}; label:in flight)",
        f"watch streams opened: {sum(f.log.streams for f in finals)} for {len(finals)} jobs",
        "timeline:",
        *(f"  {line}" for line in chaos.timeline),
    ]
    return "\n".join(lines)


async def run_campaigns(
    cs: ChaosStack, seed: int, tokens: dict[str, str]
) -> tuple[Chaos, list[Campaign], list[Final]]:
    """Plan, run the campaigns through the faults, and read every job once all is quiet."""
    rng = random.Random(seed)
    campaigns = plan_campaigns(rng, seed)
    faults = plan_faults(rng, cs)
    print("faults:\n" + "\n".join(f"  {fault}" for fault in faults), flush=True)
    chaos = Chaos(cs, SHUTDOWN_GRACE_S)
    async with Api(cs.replica_addrs, tokens) as api:
        logs = await drive(api, chaos, faults, campaigns, seed)
        # Late redeliveries land now: what is read afterwards is the final state.
        await asyncio.to_thread(cs.fakes.wait_quiet, 1.0, 30.0)
        await asyncio.sleep(2 * ACK_WAIT_S + 1.0)
        finals = [
            Final(c, await api.get_job(c.user, c.job_id), await api.leads(c.user, c.job_id),
                  logs[c.job_id])
            for c in campaigns if c.job_id
        ]  # fmt: skip
    return chaos, campaigns, finals


@pytest.mark.timeout(600)
async def test_chaos(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or secrets.randbelow(1_000_000))
    print(f"\nchaos seed {seed} (replay with CHAOS_SEED={seed})", flush=True)
    database_url = os.environ.get("TEST_DATABASE_URL", "")
    if database_url:
        await reset_postgres(database_url)
    else:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'prospect.db'}"
    jwt_secret = secrets.token_hex(32)
    tokens = {user: hs256(jwt_secret, claims(user, ttl_s=3600)) for user in USERS}
    fakes = FakeProviders(places_per_query=25, seed=seed, every_domain_has_emails=True,
                          latency_s=0.12)  # fmt: skip
    with fakes, ChaosStack(tmp_path, fakes, service_env(jwt_secret), database_url).running() as cs:
        chaos, campaigns, finals = await run_campaigns(cs, seed, tokens)
        backlogs = await asyncio.to_thread(consumer_backlogs, cs.stack.nats.monitor_url)
        rows = await read_database(database_url)
        checker = Checker(seed, fakes, chaos)
        if len(finals) != len(campaigns):
            checker.fail("submit", None, f"{len(campaigns) - len(finals)} campaign(s) unsubmitted")
        for f in finals:
            checker.check(f, rows)
        checker.global_books(finals)
        for death in chaos.died:
            checker.fail("process-died", None, death)
        for label, code in chaos.sigterm_exits.items():
            if code != 0:
                checker.fail("graceful-stop", None, f"{label} exited {code} after SIGTERM")
        report = "\n".join([
            summary(seed, chaos, finals, fakes),
            "consumers (pending, ack pending, redelivered): "
            + ", ".join(f"{name} {counts}" for name, counts in sorted(backlogs.items())),
            f"reports applied: {sum(rows.applied_reports.values())}",
        ])  # fmt: skip
        print("\n".join([report, "cancels:", *checker.cancels, *checker.notes]))
        assert not checker.problems, (
            f"{len(checker.problems)} broken invariant(s) {dict(checker.broken)}\n{report}\n"
            + "\n".join(checker.problems[:120])
        )
