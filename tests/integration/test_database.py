"""The jobs service's state layer on a real database (SQLite, and PostgreSQL when
TEST_DATABASE_URL is set) and a real nats-server: migrations, submit and the outbox,
idempotent report application, exact costs, scoped listing with signed page tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Connection, func, inspect, select, update

from prospect.v1 import work_pb2
from services.common import bus
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.common.settings import Settings
from services.jobs import db, queries
from services.jobs.models import JobRow, OutboxRow, TaskRow, utcnow
from services.jobs.unit import JOBS, Conflict, Unit
from tests.integration.harness import Harness, config, places, report


async def test_migrations_create_the_schema_and_are_idempotent(harness: Harness) -> None:
    await db.migrate(harness.engine)  # a second replica starting: nothing to do, no error
    async with harness.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"jobs", "campaigns", "leads", "outbox", "applied_reports"} <= tables


async def test_submit_records_the_job_and_queues_discovery(harness: Harness) -> None:
    job = await harness.commands.submit("alice", config(), "")
    row = await harness.job(job.id)
    assert (row.status, row.stage, row.progress, row.version) == ("PENDING", "QUEUED", 0, 1)
    [data] = await harness.take(bus.DISCOVERY_CONSUMER, 1)
    task = work_pb2.DiscoveryTask.FromString(data)
    assert task.job_id == job.id and task.config.business_type == "coffee shop"
    assert await harness.outbox.forget_published() == 1
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxRow)) == 0


async def test_idempotency_key_is_per_user(harness: Harness) -> None:
    first = await harness.commands.submit("alice", config(), "key-1")
    again = await harness.commands.submit("alice", config(), "key-1")
    other = await harness.commands.submit("bob", config(), "key-1")
    assert again.id == first.id
    assert other.id != first.id
    with pytest.raises(AlreadyExists, match="key-1"):
        await harness.commands.submit("alice", config(location="Elsewhere"), "key-1")


async def test_reports_apply_once_and_costs_add_up(harness: Harness) -> None:
    job = await harness.commands.submit("alice", config(max_results=3), "")
    apply = harness.apply
    progress = report(job.id, "r1", 0.032, discovery_progress=work_pb2.DiscoveryProgress(
        progress=10, businesses_found=4, message="Found 4"))  # fmt: skip
    await apply(progress)
    version = (await harness.job(job.id)).version
    await apply(progress)  # redelivered: changes nothing
    assert (await harness.job(job.id)).version == version

    result = report(job.id, "r2", 0.068, discovery_result=work_pb2.DiscoveryResult(
        businesses_found=4, qualified=places(3)))  # fmt: skip
    await apply(result)
    await apply(result)
    leads = await harness.leads(job.id)
    assert [lead.place_id for lead in leads] == ["p0", "p1", "p2"]
    assert sum(lead.cost_micros for lead in leads) == 100_000  # discovery shared exactly

    tasks = [work_pb2.EnrichmentTask.FromString(d)
             for d in await harness.take(bus.ENRICHMENT_CONSUMER, 3)]  # fmt: skip
    assert sorted(t.lead_id for t in tasks) == sorted(lead.id for lead in leads)
    for i, task in enumerate(tasks):
        enriched = report(job.id, f"e{i}", 0.042, enrichment_result=work_pb2.EnrichmentResult(
            lead_id=task.lead_id, email=f"info@cafe{i}.example", email_status="valid",
            verified=True))  # fmt: skip
        await apply(enriched)
        await apply(enriched)

    row = await harness.job(job.id)
    assert row.status == "COMPLETED" and row.progress == 100 and row.stage == "DONE"
    assert row.metrics["leads_enriched"] == 3
    assert row.metrics["total_cost_micros"] == 100_000 + 3 * 42_000
    leads = await harness.leads(job.id)
    assert sum(lead.cost_micros for lead in leads) == row.metrics["total_cost_micros"]
    assert all(lead.email_status == "valid" for lead in leads)


async def test_a_task_run_twice_bills_twice_but_counts_once(harness: Harness) -> None:
    job = await harness.commands.submit("alice", config(max_results=2), "")
    await harness.apply(report(job.id, "d", 0.1, discovery_result=(
        work_pb2.DiscoveryResult(businesses_found=2, qualified=places(2)))))  # fmt: skip
    first, second = await harness.leads(job.id)
    for lead, delivery in ((first, 1), (first, 2), (second, 1)):
        # The first lead's worker died after its calls; JetStream redelivered its task.
        await harness.apply(report(
            job.id, f"enrichment.{lead.id}.1.{delivery}", 0.042,
            enrichment_result=work_pb2.EnrichmentResult(lead_id=lead.id, email_status="not_found"),
        ))  # fmt: skip
    row = await harness.job(job.id)
    assert row.status == "COMPLETED" and row.metrics["leads_enriched"] == 2
    assert row.metrics["total_cost_micros"] == 100_000 + 3 * 42_000
    first, second = await harness.leads(job.id)
    assert first.cost_micros == 50_000 + 2 * 42_000
    assert first.cost_micros + second.cost_micros == row.metrics["total_cost_micros"]


async def test_listing_is_scoped_paged_and_tokens_are_checked(harness: Harness) -> None:
    ids = [(await harness.commands.submit("alice", config(), "")).id for _ in range(5)]
    await harness.commands.submit("bob", config(), "")
    seen: list[str] = []
    token = ""
    async with harness.sessions() as session:
        while True:
            rows, token = await queries.list_jobs(session, harness.tokens, "alice", 2, token, None)
            seen += [r.id for r in rows]
            if not token:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
        _, token = await queries.list_jobs(session, harness.tokens, "alice", 2, "", None)
        with pytest.raises(InvalidArgument, match="page_token"):
            altered = token[:-1] + ("1" if token[-1] != "1" else "2")
            await queries.list_jobs(session, harness.tokens, "alice", 2, altered, None)
        with pytest.raises(InvalidArgument, match="page_token"):  # another user's listing
            await queries.list_jobs(session, harness.tokens, "bob", 2, token, None)
        with pytest.raises(NotFound):
            await queries.job_for_user(session, "bob", ids[0])


async def test_cancel_then_cancel_again(harness: Harness) -> None:
    job = await harness.commands.submit("alice", config(), "")
    with pytest.raises(NotFound):
        await harness.commands.cancel("bob", job.id)
    cancelled = await harness.commands.cancel("alice", job.id)
    # Its discovery task is queued: the job waits for it to report (or STOP_TIMEOUT_S).
    assert cancelled.status == "CANCELLING"
    again = await harness.commands.cancel("alice", job.id)
    assert again.status == "CANCELLING" and again.version == cancelled.version
    await harness.outbox.settle()
    kv = await harness.js.key_value(bus.CANCEL_BUCKET)
    assert (await kv.get(job.id)).value == b"1"
    stopped = work_pb2.TaskStopped(note="dropped: the job is cancelled")
    await harness.apply(report(job.id, f"discovery.{job.id}.1.1.stopped", task_stopped=stopped))
    assert (await harness.job(job.id)).status == "CANCELLED"
    with pytest.raises(FailedPrecondition):
        await harness.commands.cancel("alice", job.id)


async def test_outbox_relay_publishes_what_a_crash_left_behind(harness: Harness) -> None:
    task = work_pb2.DiscoveryTask(job_id="job_" + "0" * 32)
    async with harness.sessions() as session, session.begin():
        session.add(OutboxRow(id="discovery.left-behind.1", subject=bus.DISCOVERY_SUBJECT,
                              payload=task.SerializeToString(),
                              created_at=utcnow() - timedelta(minutes=1)))  # fmt: skip
    assert await harness.outbox.relay_once() == 1
    [data] = await harness.take(bus.DISCOVERY_CONSUMER, 1)
    assert work_pb2.DiscoveryTask.FromString(data).job_id == task.job_id
    assert await harness.outbox.relay_once() == 0


async def test_stalled_jobs_are_retried_by_the_watchdog(harness: Harness) -> None:
    job = await harness.commands.submit("alice", config(), "")
    await harness.outbox.settle()
    assert await harness.watchdog.check_stalled() == 0  # not stale yet
    async with harness.sessions() as session, session.begin():
        row = await session.get(JobRow, job.id)
        assert row is not None
        row.updated_at = utcnow() - timedelta(hours=1)
    # Quiet, but its task waits in the queue (workers busy or down): not queued again.
    assert await harness.watchdog.check_stalled() == 1
    assert (await harness.job(job.id)).attempts == 1
    [data] = await harness.take(bus.DISCOVERY_CONSUMER, 1)  # the only task, then lost
    assert await harness.watchdog.check_stalled() == 1
    [data] = await harness.take(bus.DISCOVERY_CONSUMER, 1)
    assert work_pb2.DiscoveryTask.FromString(data).attempt == 2
    row = await harness.job(job.id)
    assert row.attempts == 2 and row.status == "PENDING" and "No progress" in row.message


async def test_retention_deletes_only_old_finished_jobs(harness: Harness) -> None:
    from services.jobs.retention import purge

    old = await harness.commands.submit("alice", config(max_results=1), "")
    await harness.apply(report(old.id, "d", 0.1, discovery_result=(
        work_pb2.DiscoveryResult(businesses_found=1, qualified=places(1)))))  # fmt: skip
    await harness.commands.cancel("alice", old.id)
    [lead] = await harness.leads(old.id)
    stopped = work_pb2.TaskStopped(lead_id=lead.id)
    await harness.apply(report(old.id, "stopped", task_stopped=stopped))
    assert (await harness.job(old.id)).status == "CANCELLED"
    recent = await harness.commands.submit("alice", config(), "")
    await harness.commands.cancel("alice", recent.id)
    running = await harness.commands.submit("alice", config(), "")
    async with harness.sessions() as session, session.begin():
        for job_id in (old.id, running.id):
            row = await session.get(JobRow, job_id)
            assert row is not None
            row.created_at = row.updated_at = utcnow() - timedelta(days=200)
            if row.completed_at is not None:
                row.completed_at = utcnow() - timedelta(days=200)
    assert await purge(harness.sessions, days=90) == 1
    async with harness.sessions() as session:
        assert await session.get(JobRow, old.id) is None
        assert await session.get(JobRow, recent.id) is not None
        assert await session.get(JobRow, running.id) is not None  # unfinished: kept
        tasks = (await session.scalars(select(TaskRow.job_id))).all()
        assert old.id not in tasks and running.id in tasks  # its tasks went with it
        assert await harness.leads(old.id) == []


async def test_submits_arriving_together_keep_their_own_checks(harness: Harness) -> None:
    """Concurrent submits share a transaction (group commit), yet each is checked on its
    own: one job per idempotency key and user, and the per-user limit counts the batch."""
    submit = harness.commands.submit
    keyed = await asyncio.gather(
        submit("alice", config(), "same"),
        submit("alice", config(), "same"),
        submit("alice", config(location="Elsewhere"), "same"),
        submit("bob", config(), "same"),
        return_exceptions=True,
    )
    assert isinstance(keyed[0], JobRow) and isinstance(keyed[1], JobRow)
    assert isinstance(keyed[3], JobRow) and keyed[0].id == keyed[1].id != keyed[3].id
    assert isinstance(keyed[2], AlreadyExists)
    limit = Settings().max_active_jobs_per_user
    outcomes = await asyncio.gather(
        *(submit("carol", config(), "") for _ in range(limit + 3)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(refused) == 3 and "MAX_ACTIVE_JOBS_PER_USER" in str(refused[0])
    accepted = {o.id for o in outcomes if isinstance(o, JobRow)}
    assert len(accepted) == limit
    async with harness.sessions() as session:
        query = select(func.count()).select_from(JobRow).where(JobRow.user_id == "carol")
        assert await session.scalar(query) == limit


async def test_a_job_changed_since_it_was_read_is_not_overwritten(harness: Harness) -> None:
    """The version guard: a unit whose job another replica changed meanwhile raises
    Conflict and writes nothing (the change then runs again)."""
    job = await harness.commands.submit("alice", config(), "")
    writer = db.Writer(harness.engine)

    def stale_write(conn: Connection) -> None:
        unit = Unit(conn)
        row = unit.job(job.id)
        assert row is not None
        # Another replica's committed change, between this unit's read and its write.
        conn.execute(update(JOBS).where(JOBS.c.id == job.id).values(version=2, progress=7))
        row.progress, row.version = 50, 2
        unit.flush()

    try:
        with pytest.raises(Conflict):
            await writer.run(stale_write)
    finally:
        writer.dispose()
    row = await harness.job(job.id)
    assert (row.version, row.progress) == (1, 0)  # the whole transaction rolled back


async def test_one_unit_updates_many_jobs_each_guarded_by_its_version(harness: Harness) -> None:
    """A batch changes many jobs in one unit (on PostgreSQL in one statement): every
    change is written, with its own values; one stale job among them writes nothing."""
    jobs = [await harness.commands.submit("alice", config(), "") for _ in range(3)]
    writer = db.Writer(harness.engine)

    def change(stale: str | None) -> Callable[[Connection], None]:
        def work(conn: Connection) -> None:
            unit = Unit(conn)
            unit.load_jobs(job.id for job in jobs)
            if stale is not None:  # another replica's committed change, after the read
                conn.execute(update(JOBS).where(JOBS.c.id == stale).values(version=2))
            for n, job in enumerate(jobs):
                row = unit.job(job.id)
                assert row is not None
                row.progress, row.version = 10 * (n + 1), row.version + 1
                row.metrics = {**row.metrics, "qualified_leads": n}
                row.error = f"note {n}" if n else ""
            unit.flush()

        return work

    try:
        with pytest.raises(Conflict):
            await writer.run(change(stale=jobs[1].id))
        for job in jobs:  # rolled back whole, the stale job's own change included
            row = await harness.job(job.id)
            assert (row.version, row.progress, row.error) == (1, 0, "")
        await writer.run(change(stale=None))
    finally:
        writer.dispose()
    for n, job in enumerate(jobs):
        row = await harness.job(job.id)
        assert (row.version, row.progress) == (2, 10 * (n + 1))
        assert row.metrics["qualified_leads"] == n
        assert row.error == (f"note {n}" if n else "")
