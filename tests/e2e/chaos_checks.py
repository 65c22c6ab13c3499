"""The invariants the chaos test (test_chaos.py) checks once the run is over, against the
API, the watchers' records, the database and the fakes' own bills; each broken one is a
line naming the job and the numbers. Why books and bill may differ, and by how much, is
in test_chaos.py's docstring; the tolerances are here.

Per job: terminal; watched with versions only increasing, CANCELLING/FAILING ending only
CANCELLED/FAILED, and ending as the API says it ended; books equal to the bill within the
allowance; the budget kept; each place stored once; the database agreeing with the API;
an accepted cancel stopping paid calls and ending CANCELLED; nothing bought twice unless a
crash explains it. Over all jobs: books and bills apart by no more than the crashes allow.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter, defaultdict

from prospect.v1 import jobs_pb2
from services.cli.client import is_terminal
from tests.e2e.chaos import Chaos, Rows, exposed
from tests.e2e.chaos_campaigns import ACK_WAIT_S, STOP_TIMEOUT_S, TERMINAL_WITHIN_S, Final
from tests.fakes import FakeProviders, FakeServer, RequestRecord

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


# -- the report -----------------------------------------------------------------------------


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
