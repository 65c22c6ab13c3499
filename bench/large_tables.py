"""Large tables (PostgreSQL only): the read paths and the retention purge with 1,000,000
jobs and 10,000,000 leads.

A database of its own on BENCH_DATABASE_URL's server (``<name>_large``, made here and
dropped at the end), its schema made by the jobs service's migrations, then filled with
server-side SQL (``INSERT ... SELECT ... FROM generate_series``, in chunks, on
:data:`LOADERS` connections at once): 1,000 users, a few with tens of thousands of jobs
and most with hundreds (user ``k`` of ``n`` has a share ``sqrt((k+1)/n) - sqrt(k/n)``),
every job finished (completed, failed or cancelled, so the service's watchdog has nothing
to do), each with its campaign row and 10 leads, created :data:`JOB_SPACING_S` apart
(58 days); :data:`OLD_JOBS` of them (the oldest) 120 days earlier, for the retention
purge. The same size in a quick run: the figures are of these tables. The indexes of the
three tables are dropped for the load and made again from their own definitions after it
(the schema ends exactly as the migrations made it: checked, and compared with the models
as tests/integration/test_schema.py does), then VACUUM ANALYZE (the server's autovacuum
may be off) and a CHECKPOINT, so neither runs during the measurements.

Then a jobs service (its own nats-server, no workers; AUTH_MODE=jwt, so each call is made
as the user owning the data) on that database, and real gRPC calls, one at a time: ListJobs
first pages of users drawn at random, ListJobs pages :data:`DEEP_PAGES` of the users with
the most jobs (following the page tokens from the first), GetJob and ListLeads (two pages
of 5: the first and the following one) of jobs drawn at random. The per-user row budget of
the listings is lifted (LIST_ROWS_PER_USER_PER_S): the figures are the query path's.
The queries the service runs for these (services/jobs/queries.py, run in this process and
caught on the way to the driver) are shown with EXPLAIN (ANALYZE, BUFFERS).

Last, the retention purge (``services.jobs.retention.purge``, in a process of its own as
the CronJob would run it) deletes the old jobs while :data:`SUBMITTERS` clients keep
submitting campaigns: the purge's rows a second (jobs, campaigns and leads) and the submit
p99 during it against the :data:`SUBMIT_BEFORE_S` before it. The generated jobs have no
tasks, applied reports, history or webhooks: a real purge deletes those too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bench.config import BenchConfig, log
from bench.harness import Harness
from bench.load import campaign
from bench.stats import percentile, rounded
from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import REPO_ROOT
from services.jobs import db, queries, retention
from services.jobs.auth import mint_token
from services.jobs.models import Base, JobRow
from services.jobs.page_tokens import PageTokens

JOBS = 1_000_000
LEADS_PER_JOB = 10
USERS = 1000
OLD_JOBS = 50_000  # finished 120 days ago: the purge deletes them (and their rows)
RETENTION_DAYS = 90.0
JOB_SPACING_S = 5  # between consecutive jobs (all users): 1,000,000 jobs over 58 days
JOBS_CHUNK = 100_000  # jobs (or campaigns) an INSERT makes
LEAD_JOBS_CHUNK = 50_000  # jobs whose leads an INSERT makes (500,000 leads)
LOADERS = 2  # connections loading, and building indexes, at once (the machine's cores)
TABLES = ("jobs", "campaigns", "leads")
SAMPLES = 300  # timed calls of each kind
DEEP_USERS = 3  # the users with the most jobs: their deep pages
DEEP_PAGES = range(51, 151)  # the ListJobs pages timed for each of them (page 1 first)
LEADS_PAGE = 5  # ListLeads page size: a first page and a following one per job
WARMUP = 20  # untimed calls of each kind first
SUBMITTERS = 4  # clients submitting campaigns around the purge, one at a time each
SUBMIT_BEFORE_S = 10.0
PURGE_LIMIT_S = 600.0
TARGET_P99_MS = 20.0

# The large stack's settings on top of the bench's: users by token, and no list budget.
_JWT_SECRET = uuid.uuid4().hex + uuid.uuid4().hex
_PAGE_SECRET = uuid.uuid4().hex + uuid.uuid4().hex
LARGE_ENV = {
    "AUTH_MODE": "jwt",
    "AUTH_JWT_SECRET": _JWT_SECRET,
    "PAGE_TOKEN_SECRET": _PAGE_SECRET,
    "LIST_ROWS_PER_USER_PER_S": "1000000000",
    "LIST_ROWS_PER_USER_BURST": "1000000000",
}


@dataclass
class LargeTablesResult:
    skipped: str = ""  # why nothing was measured
    jobs: int = 0
    leads: int = 0
    generate_s: float = math.nan  # database made, filled, indexed, vacuumed and analyzed
    phases_s: dict[str, float] = field(default_factory=dict)
    table_mb: dict[str, float] = field(default_factory=dict)  # heap + indexes
    listjobs_first_ms: list[float] = field(default_factory=list)
    listjobs_deep_ms: list[float] = field(default_factory=list)
    getjob_ms: list[float] = field(default_factory=list)
    listleads_ms: list[float] = field(default_factory=list)
    plans: dict[str, str] = field(default_factory=dict)  # query -> EXPLAIN ANALYZE text
    retention_jobs: int = 0
    retention_s: float = math.nan
    submit_before_ms: list[float] = field(default_factory=list)
    submit_during_ms: list[float] = field(default_factory=list)

    @property
    def retention_rows(self) -> int:
        """Rows the purge deleted: each generated job has its campaign and its leads."""
        return self.retention_jobs * (2 + LEADS_PER_JOB)

    def figures(self) -> dict[str, float | None]:
        def p99(values: Sequence[float]) -> float:
            return percentile(values, 99)

        first, deep = p99(self.listjobs_first_ms), p99(self.listjobs_deep_ms)
        worst = math.nan if math.isnan(first) or math.isnan(deep) else max(first, deep)
        rate = self.retention_rows / self.retention_s if self.retention_s > 0 else math.nan
        return {
            "large_listjobs_p99_ms": rounded(worst),  # first and deep pages: the worse
            "large_listjobs_first_p99_ms": rounded(first),
            "large_listjobs_deep_p99_ms": rounded(deep),
            "large_getjob_p99_ms": rounded(p99(self.getjob_ms)),
            "large_listleads_p99_ms": rounded(p99(self.listleads_ms)),
            "large_retention_rows_per_s": rounded(rate, 0),
            "large_submit_p99_before_retention_ms": rounded(p99(self.submit_before_ms)),
            "large_submit_p99_during_retention_ms": rounded(p99(self.submit_during_ms)),
            "large_generate_s": rounded(self.generate_s, 1),
        }

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"  large tables: skipped ({self.skipped})"]
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in self.phases_s.items())
        sizes = ", ".join(f"{k} {mb / 1024:.1f} GB" for k, mb in self.table_mb.items())
        out = [
            f"  large tables: {self.jobs:,} jobs and {self.leads:,} leads of {USERS} users "
            f"made in {self.generate_s:.1f}s ({phases}); heap and indexes: {sizes}",
            f"    one call at a time, p50 / p99 ms: ListJobs first pages "
            f"{_p50_p99(self.listjobs_first_ms)}, pages {DEEP_PAGES.start}-"
            f"{DEEP_PAGES.stop - 1} of the {DEEP_USERS} users with most jobs "
            f"{_p50_p99(self.listjobs_deep_ms)}, GetJob {_p50_p99(self.getjob_ms)}, "
            f"ListLeads (pages of {LEADS_PAGE}) {_p50_p99(self.listleads_ms)}",
        ]
        for name, plan in self.plans.items():
            out.append(f"    plan {name}: {plan_summary(plan)}")
        if self.retention_jobs:
            out.append(
                f"    retention: {self.retention_jobs:,} jobs ({self.retention_rows:,} rows) "
                f"purged in {self.retention_s:.1f}s "
                f"({self.retention_jobs / self.retention_s:.0f} jobs/s); submit p50 / p99 "
                f"ms from {SUBMITTERS} clients before {_p50_p99(self.submit_before_ms)} "
                f"({len(self.submit_before_ms)}), during {_p50_p99(self.submit_during_ms)} "
                f"({len(self.submit_during_ms)})"
            )
        return out


def _p50_p99(values: Sequence[float]) -> str:
    return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}"


def plan_summary(plan: str) -> str:
    """The scan nodes of an EXPLAIN (ANALYZE) text, the rows its filters threw away, and
    the execution time, on one line."""
    nodes, removed, total = [], 0, ""
    for line in plan.splitlines():
        stripped = line.strip().removeprefix("->").strip()
        if " on " in stripped and "Scan" in stripped:
            nodes.append(stripped.split("  (", 1)[0])
        if stripped.startswith("Rows Removed by Filter:"):
            removed += int(stripped.rsplit(":", 1)[1])
        if stripped.startswith("Execution Time:"):
            total = stripped.removeprefix("Execution Time:").strip()
    return f"{'; '.join(nodes) or '?'}; {removed} rows removed by filter; {total}"


def large_url(bench_url: str) -> str:
    """The large database's URL: BENCH_DATABASE_URL's server, ``<its database>_large``."""
    url = make_url(db.normalize_url(bench_url))
    return url.set(database=f"{url.database or 'postgres'}_large").render_as_string(
        hide_password=False
    )


# -- Generation -----------------------------------------------------------------------------


def _series(lo: int, hi: int, base: datetime) -> str:
    """Jobs ``lo`` to ``hi`` (1-based) as rows (n, t: created, st: status, u: user)."""
    return f"""(
        SELECT n,
            '{base.isoformat()}'::timestamptz - ({JOBS} - n) * interval '{JOB_SPACING_S} s'
                - CASE WHEN n <= {OLD_JOBS} THEN interval '120 days' ELSE interval '0' END AS t,
            CASE n % 20 WHEN 7 THEN 'FAILED' WHEN 13 THEN 'CANCELLED' ELSE 'COMPLETED' END AS st,
            'user-' || lpad(floor({USERS} * power(((n * 2654435761) % 4294967296)
                / 4294967296.0, 2))::int::text, 4, '0') AS u
        FROM generate_series({lo}::bigint, {hi}::bigint) AS n) AS g"""


_CONFIG = (
    """'{"business_type": "coffee shop", "location": "Springfield ' || (n % 5000) || '", """
    """"max_results": 10, "min_confidence_score": 0, "budget_limit": 0.0, """
    """"budget_limit_micros": 0, "verify_emails": true}'"""
)
_METRICS = json.dumps(
    {
        "businesses_found": 20, "qualified_leads": 10, "leads_enriched": 10,
        "emails_found": 8, "emails_verified": 6, "total_cost_micros": 512000,
        "discovery_cost_micros": 202000, "avg_confidence": 71.5, "leads_dispatched": 10,
        "leads_failed": 0, "leads_skipped_budget": 0, "leads_never_queued": 0,
        "leads_stopped": 0, "leads_stopped_unqueued": 0, "leads_from_cache": 0,
        "leads_skipped_known": 0, "leads_skipped_goal": 0, "lead_price_micros": 31000,
        "providers": {"places": "sandbox", "email": "sandbox"},
        "cost_by_provider": {"google_places": 202000, "hunter": 310000},
    }
)  # fmt: skip


def _jobs_sql(lo: int, hi: int, base: datetime) -> str:
    return f"""
    INSERT INTO jobs (id, campaign_id, user_id, type, status, stage, progress, version,
        config, metrics, error, message, attempts, max_attempts, idempotency_key, created_at,
        started_at, completed_at, updated_at, stopping_since, trace_context, schedule_id,
        retry_of, retried_by)
    SELECT 'job_' || md5('j' || n), 'cmp_' || md5('c' || n), u, 'campaign', st, 'DONE', 100,
        24, ({_CONFIG})::json, '{_METRICS}'::json,
        CASE st WHEN 'FAILED' THEN 'discovery failed: provider unavailable' ELSE '' END,
        'Done', 1, 3, CASE WHEN n % 2 = 1 THEN md5('k' || n) END, t,
        t + interval '1 s', t + interval '90 s', t + interval '90 s', NULL, NULL, NULL,
        NULL, NULL
    FROM {_series(lo, hi, base)}"""


def _campaigns_sql(lo: int, hi: int, base: datetime) -> str:
    return f"""
    INSERT INTO campaigns (id, job_id, user_id, business_type, location, status,
        results_count, total_cost_micros, avg_confidence, created_at, completed_at)
    SELECT 'cmp_' || md5('c' || n), 'job_' || md5('j' || n), u, 'coffee shop',
        'Springfield ' || (n % 5000), st, 10, 512000, 71.5, t, t + interval '90 s'
    FROM {_series(lo, hi, base)}"""


def _leads_sql(lo: int, hi: int, base: datetime) -> str:
    return f"""
    INSERT INTO leads (id, campaign_id, job_id, place_id, rank, business_name, address,
        phone, website, rating, review_count, confidence_score, email, email_status, state,
        cost_micros, created_at, updated_at, cost_by_provider, from_cache, email_source,
        cost_by_step)
    SELECT 'lead_' || md5('l' || n || '-' || r), 'cmp_' || md5('c' || n),
        'job_' || md5('j' || n), 'ChIJ' || substr(md5('p' || n || '-' || r), 1, 23), r,
        'Coffee Shop ' || n || '-' || r,
        (n % 997 + r) || ' Main Street, Springfield ' || (n % 5000),
        '+1 555 01' || lpad(r::text, 2, '0'), 'https://b' || n || '-' || r || '.example.com',
        4.5, 120 + r, 90 - r * 5, 'info@b' || n || '-' || r || '.example.com', 'valid',
        'enriched', 31000, t + interval '30 s', t + interval '80 s',
        '{{"hunter": 31000}}'::json, false, 'website', '{{"website": 0, "hunter": 31000}}'::json
    FROM {_series(lo, hi, base)}, generate_series(0, {LEADS_PER_JOB - 1}) AS r"""


@dataclass(frozen=True)
class _Index:
    table: str
    name: str
    definition: str  # pg_get_indexdef: CREATE [UNIQUE] INDEX name ON table USING btree (...)
    constraint: str  # "p" (primary key), "u" (unique constraint) or "" (a plain index)


_INDEXES = text(
    """
    SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid), coalesce(c.contype::text, '')
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace s ON s.oid = t.relnamespace
    LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.contype IN ('p', 'u')
    WHERE s.nspname = current_schema() AND t.relname = ANY(:tables)
    ORDER BY t.relname, i.relname
    """
)


async def _indexes(conn: AsyncConnection) -> list[_Index]:
    rows = (await conn.execute(_INDEXES, {"tables": list(TABLES)})).all()
    return [_Index(str(t), str(n), str(d), str(c)) for t, n, d, c in rows]


async def _drop(conn: AsyncConnection, index: _Index) -> None:
    if index.constraint:
        await conn.execute(text(f'ALTER TABLE {index.table} DROP CONSTRAINT "{index.name}"'))
    else:
        await conn.execute(text(f'DROP INDEX "{index.name}"'))


async def _build(conn: AsyncConnection, index: _Index) -> None:
    """Make ``index`` again from its own definition; a constraint's takes it over."""
    await conn.execute(text(index.definition))
    kind = {"p": "PRIMARY KEY", "u": "UNIQUE"}.get(index.constraint)
    if kind is not None:
        await conn.execute(
            text(f'ALTER TABLE {index.table} ADD CONSTRAINT "{index.name}" '
                 f'{kind} USING INDEX "{index.name}"')
        )  # fmt: skip


def _model_differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": False})
    return [d for d in compare_metadata(context, Base.metadata) if "alembic_version" not in repr(d)]


async def _on_loaders(
    engine: AsyncEngine, work: Sequence[tuple[str, Callable[[AsyncConnection], Awaitable[None]]]]
) -> None:
    """Run ``work`` (label, step) on :data:`LOADERS` connections at once, in order,
    logging each step done."""
    queue = list(work)
    done = 0

    async def loader() -> None:
        nonlocal done
        async with engine.connect() as conn:
            await conn.execute(text("SET synchronous_commit = off"))
            await conn.execute(text("SET maintenance_work_mem = '1GB'"))
            await conn.execute(text("SET max_parallel_maintenance_workers = 0"))
            while queue:
                label, step = queue.pop(0)
                started = time.monotonic()
                await step(conn)
                done += 1
                log(f"large tables: {label} ({time.monotonic() - started:.1f}s, {done} done)")

    await asyncio.gather(*(loader() for _ in range(LOADERS)))


def _statement(sql: str) -> Callable[[AsyncConnection], Awaitable[None]]:
    async def run(conn: AsyncConnection) -> None:
        await conn.execute(text(sql))

    return run


def _index_step(index: _Index) -> Callable[[AsyncConnection], Awaitable[None]]:
    async def run(conn: AsyncConnection) -> None:
        await _build(conn, index)

    return run


async def generate(url: str, result: LargeTablesResult) -> None:
    """Migrate the (empty) database at ``url`` and fill it (see the module's doc)."""
    engine = create_async_engine(
        db.normalize_url(url), isolation_level="AUTOCOMMIT", pool_size=LOADERS + 1
    )
    base = datetime.now(UTC).replace(microsecond=0)
    phases = result.phases_s

    async def phase(name: str, work: Awaitable[None]) -> None:
        started = time.monotonic()
        await work
        phases[name] = time.monotonic() - started

    try:
        migrator = db.create_engine(url)
        try:
            await phase("migrate", db.migrate(migrator))
        finally:
            await migrator.dispose()
        async with engine.connect() as conn:
            indexes = await _indexes(conn)
            for index in indexes:
                await _drop(conn, index)
        job_chunks = [(lo, min(lo + JOBS_CHUNK - 1, JOBS)) for lo in range(1, JOBS + 1, JOBS_CHUNK)]
        await phase(
            "jobs and campaigns",
            _on_loaders(
                engine,
                [(f"jobs {hi:,}", _statement(_jobs_sql(lo, hi, base))) for lo, hi in job_chunks]
                + [
                    (f"campaigns {hi:,}", _statement(_campaigns_sql(lo, hi, base)))
                    for lo, hi in job_chunks
                ],
            ),
        )
        lead_chunks = [
            (lo, min(lo + LEAD_JOBS_CHUNK - 1, JOBS)) for lo in range(1, JOBS + 1, LEAD_JOBS_CHUNK)
        ]
        await phase(
            "leads",
            _on_loaders(
                engine,
                [
                    (f"leads {hi * LEADS_PER_JOB:,}", _statement(_leads_sql(lo, hi, base)))
                    for lo, hi in lead_chunks
                ],
            ),
        )
        # Largest first (leads), so the two loaders end together.
        order = sorted(indexes, key=lambda i: TABLES.index(i.table), reverse=True)
        await phase(
            "indexes",
            _on_loaders(engine, [(f"index {i.name}", _index_step(i)) for i in order]),
        )
        async with engine.connect() as conn:
            rebuilt = await _indexes(conn)
            if rebuilt != indexes:
                raise RuntimeError(f"indexes not as the migrations made them: {rebuilt}")
            differences = await conn.run_sync(_model_differences)
            if differences:
                raise RuntimeError(f"schema differs from the models: {differences}")
        vacuums = [(f"vacuum analyze {t}", _statement(f"VACUUM ANALYZE {t}")) for t in TABLES]
        await phase("vacuum analyze", _on_loaders(engine, vacuums[::-1]))
        async with engine.connect() as conn:
            await phase("checkpoint", _execute(conn, "CHECKPOINT"))
            for table in TABLES:
                size = await conn.scalar(text(f"SELECT pg_total_relation_size('{table}')"))
                result.table_mb[table] = int(size or 0) / 2**20
            result.jobs = int(await conn.scalar(text("SELECT count(*) FROM jobs")) or 0)
            result.leads = result.jobs * LEADS_PER_JOB  # counting 10M rows takes seconds
    finally:
        await engine.dispose()


async def _execute(conn: AsyncConnection, sql: str) -> None:
    await conn.execute(text(sql))


@asynccontextmanager
async def own_database(bench_url: str) -> AsyncIterator[str]:
    """Create the large database (dropping one left by an interrupted run), yield its URL,
    drop it at the end."""
    url = large_url(bench_url)
    name = make_url(url).database
    admin = create_async_engine(db.normalize_url(bench_url), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            log(f"large tables: database {name} dropped")
    finally:
        await admin.dispose()


# -- Reads --------------------------------------------------------------------------------


def _job_id(n: int) -> str:
    return "job_" + hashlib.md5(f"j{n}".encode()).hexdigest()


def _auth(user: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(_JWT_SECRET, user, ttl_s=3600)}"),)


async def _timed(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[float]:
    """Each call in turn (after :data:`WARMUP` of them untimed); milliseconds each."""
    for call in calls[:WARMUP]:
        await call()
    out = []
    for call in calls:
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def _sample_jobs(url: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """(job id, owner) of ``count`` generated jobs drawn at random (none of the old ones)."""
    ids = [_job_id(rng.randint(OLD_JOBS + 1, JOBS)) for _ in range(count)]
    engine = create_async_engine(db.normalize_url(url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT id, user_id FROM jobs WHERE id = ANY(:ids)"), {"ids": ids}
            )
            owner = {str(i): str(u) for i, u in rows.all()}
    finally:
        await engine.dispose()
    return [(i, owner[i]) for i in ids]


async def measure_reads(channel: grpc.aio.Channel, url: str, result: LargeTablesResult) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    rng = random.Random(7)
    auth = {f"user-{k:04d}": _auth(f"user-{k:04d}") for k in range(USERS)}

    def list_first(user: str) -> Callable[[], Awaitable[Any]]:
        return lambda: stub.ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth[user], timeout=30)

    users = [f"user-{rng.randrange(USERS):04d}" for _ in range(SAMPLES)]
    result.listjobs_first_ms = await _timed([list_first(u) for u in users])

    for k in range(DEEP_USERS):
        user = f"user-{k:04d}"
        token = ""
        for page in range(1, DEEP_PAGES.stop):
            request = jobs_pb2.ListJobsRequest(page_token=token)
            started = time.perf_counter()
            response = await stub.ListJobs(request, metadata=auth[user], timeout=30)
            if page in DEEP_PAGES:
                result.listjobs_deep_ms.append((time.perf_counter() - started) * 1000)
            token = response.next_page_token
            if not token:
                raise RuntimeError(f"{user} has only {page} pages of jobs")

    jobs = await _sample_jobs(url, SAMPLES, rng)

    def get(job_id: str, user: str) -> Callable[[], Awaitable[Any]]:
        request = jobs_pb2.GetJobRequest(job_id=job_id)
        return lambda: stub.GetJob(request, metadata=auth[user], timeout=30)

    result.getjob_ms = await _timed([get(j, u) for j, u in jobs])

    async def leads(job_id: str, user: str, page_token: str = "") -> str:
        request = jobs_pb2.ListLeadsRequest(
            job_id=job_id, page_size=LEADS_PAGE, page_token=page_token
        )
        response = await stub.ListLeads(request, metadata=auth[user], timeout=30)
        if len(response.leads) != LEADS_PAGE:
            raise RuntimeError(f"ListLeads of {job_id}: {len(response.leads)} leads")
        return str(response.next_page_token)

    for job_id, user in jobs[:WARMUP]:
        await leads(job_id, user)
    for job_id, user in jobs:
        started = time.perf_counter()
        token = await leads(job_id, user)
        result.listleads_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await leads(job_id, user, token)
        result.listleads_ms.append((time.perf_counter() - started) * 1000)


# -- EXPLAIN of the service's own queries ---------------------------------------------------


async def explain(url: str, result: LargeTablesResult) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of what services/jobs/queries.py runs for ListJobs (a
    first page and page :data:`DEEP_PAGES`'s last of the user with most jobs), GetJob and
    ListLeads (both pages), and of the purge's selection of jobs to delete: each statement
    caught on its way to the driver, with its parameters, and explained as it was sent."""
    engine = db.create_engine(url)
    sessions = db.sessionmaker(engine)
    tokens = PageTokens(_PAGE_SECRET.encode())
    caught: list[tuple[str, Any]] = []

    def catch(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        caught.append((statement, parameters))

    async def last_statement(work: Callable[[Any], Awaitable[Any]]) -> tuple[str, Any]:
        caught.clear()
        async with sessions() as session:
            await work(session)
        return caught[-1]

    event.listen(engine.sync_engine, "before_cursor_execute", catch)
    statements: dict[str, tuple[str, Any]] = {}
    try:
        user = "user-0000"
        statements["ListJobs first page"] = await last_statement(
            lambda s: queries.list_jobs(s, tokens, user, 50, "", None)
        )
        token = ""
        for _ in range(DEEP_PAGES.stop - 2):
            async with sessions() as session:
                _, token = await queries.list_jobs(session, tokens, user, 50, token, None)
        statements[f"ListJobs page {DEEP_PAGES.stop - 1}"] = await last_statement(
            lambda s: queries.list_jobs(s, tokens, user, 50, token, None)
        )
        (job_id, owner), *_ = await _sample_jobs(url, 1, random.Random(3))
        statements["GetJob"] = await last_statement(
            lambda s: queries.job_for_user(s, owner, job_id)
        )
        async with sessions() as session:
            job = await queries.job_for_user(session, owner, job_id)
            _, leads_token = await queries.list_leads(session, tokens, job, LEADS_PAGE, "")
        statements["ListLeads first page"] = await last_statement(
            lambda s: queries.list_leads(s, tokens, job, LEADS_PAGE, "")
        )
        statements["ListLeads next page"] = await last_statement(
            lambda s: queries.list_leads(s, tokens, job, LEADS_PAGE, leads_token)
        )
        # The purge's choice of a batch (services/jobs/retention.py), as it builds it.
        cutoff = datetime.now(UTC) - timedelta(days=RETENTION_DAYS)
        batch = (
            select(JobRow.id)
            .where(JobRow.status.in_(retention.FINISHED), JobRow.completed_at < cutoff)
            .limit(retention.BATCH)
        )
        statements["retention batch"] = await last_statement(lambda s: s.execute(batch))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", catch)
    try:
        async with engine.connect() as conn:
            for name, (statement, parameters) in statements.items():
                explained = await conn.exec_driver_sql(
                    f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters
                )
                plan = "\n".join(str(row[0]) for row in explained.all())
                result.plans[name] = plan
                log(f"large tables: EXPLAIN {name}:\n{statement}\n{plan}")
    finally:
        await engine.dispose()


# -- Retention --------------------------------------------------------------------------------

_PURGE = """
import asyncio, json, sys, time
from services.jobs import db, retention

async def main():
    engine = db.create_engine(sys.argv[1])
    try:
        print("purging", flush=True)
        started = time.perf_counter()
        count = await retention.purge(db.sessionmaker(engine), float(sys.argv[2]))
        print(json.dumps({"jobs": count, "s": time.perf_counter() - started}), flush=True)
    finally:
        await engine.dispose()

asyncio.run(main())
"""


async def measure_retention(channel: grpc.aio.Channel, url: str, result: LargeTablesResult) -> None:
    """The purge, in a process of its own, while :data:`SUBMITTERS` clients submit."""
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    submits: list[tuple[float, float, float]] = []  # (started, ended, ms): monotonic
    stop = asyncio.Event()

    async def submitter(index: int) -> None:
        metadata = _auth(f"user-{10 + index:04d}")
        n = 0
        while not stop.is_set():
            request = jobs_pb2.SubmitCampaignRequest(
                config=campaign(index * 1_000_000 + n, max_results=5),
                idempotency_key=uuid.uuid4().hex,
            )
            started = time.monotonic()
            await stub.SubmitCampaign(request, metadata=metadata, timeout=30)
            ended = time.monotonic()
            submits.append((started, ended, (ended - started) * 1000))
            n += 1

    clients = [asyncio.create_task(submitter(i)) for i in range(SUBMITTERS)]
    try:
        await asyncio.sleep(1.0)  # warm-up, not counted
        before_from = time.monotonic()
        await asyncio.sleep(SUBMIT_BEFORE_S)
        before_to = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PURGE, url, f"{RETENTION_DAYS:g}",
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"purging":
                raise RuntimeError(f"the purge did not start: {line!r}")
            purge_from = time.monotonic()
            line = await asyncio.wait_for(proc.stdout.readline(), PURGE_LIMIT_S)
            purge_to = time.monotonic()
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        done = json.loads(line)
        result.retention_jobs, result.retention_s = int(done["jobs"]), float(done["s"])
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    for task in clients:
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"a submit failed: {task.exception()!r}")
    result.submit_before_ms = [ms for s, e, ms in submits if s >= before_from and e <= before_to]
    result.submit_during_ms = [ms for s, e, ms in submits if s >= purge_from and e <= purge_to]
    if result.retention_jobs != OLD_JOBS:
        raise RuntimeError(f"the purge deleted {result.retention_jobs} jobs, not {OLD_JOBS}")


# -- The scenario -------------------------------------------------------------------------------


async def run_large_tables(config: BenchConfig) -> LargeTablesResult:
    """The scenario (see the module's doc); skipped, saying why, without
    BENCH_DATABASE_URL."""
    if not config.database_url:
        return LargeTablesResult(skipped="PostgreSQL only: BENCH_DATABASE_URL is not set")
    result = LargeTablesResult()
    async with own_database(config.database_url) as url:
        started = time.monotonic()
        await generate(url, result)
        result.generate_s = time.monotonic() - started
        log(
            f"large tables: {result.jobs:,} jobs, {result.leads:,} leads in "
            f"{result.generate_s:.1f}s"
        )
        await explain(url, result)
        stack_config = dataclasses.replace(
            config, database_url=url, stack_env={**config.stack_env, **LARGE_ENV}
        )
        harness = Harness(stack_config)
        try:
            await harness.start()
            await measure_reads(harness.channel, url, result)
            f = result.figures()
            log(
                f"large tables: p99 ListJobs first {f['large_listjobs_first_p99_ms']} ms, "
                f"deep {f['large_listjobs_deep_p99_ms']} ms, GetJob "
                f"{f['large_getjob_p99_ms']} ms, ListLeads {f['large_listleads_p99_ms']} ms"
            )
            await measure_retention(harness.channel, url, result)
            harness.check_alive()
            f = result.figures()
            log(
                f"large tables: retention {f['large_retention_rows_per_s']} rows/s, submit "
                f"p99 {f['large_submit_p99_before_retention_ms']} ms before, "
                f"{f['large_submit_p99_during_retention_ms']} ms during"
            )
        finally:
            await harness.close()
            await asyncio.to_thread(harness.stop)
    return result


def main() -> None:
    """``python -m bench.large_tables``: the scenario alone (BENCH_DATABASE_URL)."""
    result = asyncio.run(run_large_tables(BenchConfig.from_env()))
    for line in result.lines():
        print(line, file=sys.stderr)
    print(json.dumps(result.figures()))


if __name__ == "__main__":
    main()
