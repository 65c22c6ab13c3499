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

The campaigns and the faults are planned and run by chaos_campaigns.py, on the harness of
chaos.py; the invariants and their tolerances are in chaos_checks.py.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from tests.e2e.chaos import ChaosStack, consumer_backlogs, read_database, reset_postgres
from tests.e2e.chaos_campaigns import USERS, run_campaigns, service_env
from tests.e2e.chaos_checks import Checker, summary
from tests.e2e.tokens import claims, hs256
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e


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
