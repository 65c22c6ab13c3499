"""The report path on a real database and a real nats-server: every report applied exactly
once under a race between jobs replicas, a bad report refused on its own, and a final job
that never changes again."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import pytest
from sqlalchemy import Connection, func, select, text, update

from prospect.v1 import work_pb2
from services.cli.stack import NatsServer
from services.common import bus
from services.jobs.models import AppliedReportRow, CampaignRow, JobRow, TaskRow, utcnow
from services.jobs.report_consumer import apply_reports
from services.jobs.unit import Unit
from tests.conftest import TEST_DATABASE_URL
from tests.integration.harness import Harness, config, discovered, jobs_service, report


async def consume(harness: Harness, until: int, partitions: int) -> None:
    """Run the report consumer until its consumers have ``until`` messages acked or
    terminated (nothing pending, nothing waiting for an ack)."""
    stop = asyncio.Event()
    task = asyncio.create_task(harness.consumer.run(stop))
    names = bus.report_consumers(partitions)
    try:
        for _ in range(600):
            infos = [await harness.js.consumer_info(bus.EVENTS_STREAM, n) for n in names]
            taken = sum(info.delivered.consumer_seq for info in infos)
            waiting = sum(info.num_pending + info.num_ack_pending for info in infos)
            if taken >= until and waiting == 0:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"reports not all taken: {infos}")
    finally:
        stop.set()
        await task


async def backdate(harness: Harness, job_id: str, column: str, by: timedelta) -> None:
    """Set the job's time ``column`` ``by`` in the past (a watchdog timeout has passed)."""
    async with harness.sessions() as session, session.begin():
        await session.execute(
            update(JobRow).where(JobRow.id == job_id).values({column: utcnow() - by})
        )


def past_stall(harness: Harness) -> float:
    """Seconds a job must have been quiet to be stalled, and a little more."""
    return harness.settings.stall_timeout_s + 5.0


async def held_up(harness: Harness, held: work_pb2.WorkerReport) -> None:
    """``held`` (about its task) on the events stream and not applied: the report
    consumers are down."""
    await harness.about_task(held)
    await harness.js.publish(bus.events_subject(held.job_id), held.SerializeToString())


@pytest.mark.parametrize("partitions", [1, 4])
async def test_a_bad_report_is_refused_alone_and_holds_up_nobody(
    database_url: str, nats_server: NatsServer, partitions: int
) -> None:
    async with jobs_service(database_url, nats_server, report_partitions=partitions) as harness:
        await _bad_report_refused_alone(harness, partitions)


async def _bad_report_refused_alone(harness: Harness, partitions: int) -> None:
    jobs = [await harness.commands.submit("alice", config(max_results=2), "") for _ in range(3)]
    poisoned = await harness.about_task(discovered(jobs[0].id, 2, "poisoned"))
    poisoned.charges[0].cost_usd = math.nan
    # Published on another job's subject.
    forged = await harness.about_task(discovered(jobs[1].id, 2, "forged"))
    await harness.js.publish(bus.events_subject(jobs[0].id), poisoned.SerializeToString())
    await harness.js.publish(bus.events_subject(jobs[2].id), forged.SerializeToString())
    await harness.js.publish(bus.events_subject(jobs[0].id), b"\xff not protobuf")
    for i, job in enumerate(jobs):
        good = await harness.about_task(discovered(job.id, 2, f"good{i}"))
        await harness.js.publish(bus.events_subject(job.id), good.SerializeToString())
    await consume(harness, until=6, partitions=partitions)
    for job in jobs:  # every good report applied, in the same fetch as the bad ones
        row = await harness.job(job.id)
        assert row.stage == "ENRICHING" and row.metrics["total_cost_micros"] == 100_000
    async with harness.sessions() as session:
        applied = set((await session.scalars(select(AppliedReportRow.report_id))).all())
    assert applied == {"good0", "good1", "good2"}


@pytest.mark.parametrize("database_url", ["postgresql"] if TEST_DATABASE_URL else [], indirect=True)
async def test_two_replicas_racing_on_one_job_both_apply_their_reports(
    database_url: str, nats_server: NatsServer
) -> None:
    """One replica applies an intent; the other, at the same moment, the discovery result
    that repeats the intent's id. The second's transaction collides with the first's on
    that id: it must run again and apply the result, not count it as applied (PostgreSQL:
    two writers; SQLite serializes its writers, so one replica is all it runs)."""
    async with (
        jobs_service(database_url, nats_server) as a,
        jobs_service(database_url, nats_server) as b,
    ):
        job = await a.commands.submit("alice", config(max_results=2), "")
        intent = report(job.id, "discovery.call1", 0.035, charges_only=work_pb2.ChargesOnly())
        await a.about_task(intent)
        result = await a.about_task(discovered(job.id, 2, "discovery.result"))
        result.charges.pop()
        result.intents.append(
            work_pb2.Intent(
                report_id="discovery.call1",
                charge=work_pb2.Charge(provider="sandbox", operation="text_search", cost_usd=0.035),
                settled=True,
                billed_usd=0.035,
            )
        )
        async with a.engine.connect() as conn:
            # Replica A applies the intent and holds its transaction open...
            await conn.begin()

            def apply_intent(sync: Connection) -> None:
                unit = Unit(sync)
                apply_reports(unit, [intent], a.consumer.prices)
                unit.flush()

            await conn.run_sync(apply_intent)
            # ... while replica B applies the result, which waits on A's row.
            racing = asyncio.create_task(b.consumer.apply([result]))
            for _ in range(400):
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                )
                if waiting:
                    break
                assert not racing.done(), racing
                await asyncio.sleep(0.01)
            else:
                pytest.fail("replica B never waited on replica A's transaction")
            await conn.commit()
        await racing
        row = await a.job(job.id)
        assert row.stage == "ENRICHING", row.message  # the result was applied
        assert row.metrics["total_cost_micros"] == 35_000  # the intent once, as billed
        assert [lead.place_id for lead in await a.leads(job.id)] == ["p0", "p1"]


async def test_a_final_job_and_its_leads_never_change_again(harness: Harness) -> None:
    job = await harness.commands.submit("alice", config(max_results=2), "")
    await harness.apply(discovered(job.id, 2))
    first, second = await harness.leads(job.id)
    found = work_pb2.EnrichmentResult(lead_id=first.id, email="a@x.example", email_status="valid")
    await harness.apply(report(job.id, "e1", 0.03, enrichment_result=found))
    cancelling = await harness.commands.cancel("alice", job.id)
    assert cancelling.status == "CANCELLING"  # the second lead's task is under way
    stopped = work_pb2.TaskStopped(lead_id=second.id)
    await harness.apply(report(job.id, "s2", 0.02, task_stopped=stopped))
    final = await harness.job(job.id)
    assert final.status == "CANCELLED"
    assert final.metrics["total_cost_micros"] == 100_000 + 30_000 + 20_000
    leads = await harness.leads(job.id)
    assert [lead.email_status for lead in leads] == ["valid", "skipped_cancelled"]

    # Reports arriving after the job is final: refused, nothing changes.
    late = work_pb2.EnrichmentResult(lead_id=second.id, email="b@x.example", email_status="valid")
    await harness.apply(report(job.id, "late1", 0.5, enrichment_result=late))
    await harness.apply(report(job.id, "late2", 0.7, charges_only=work_pb2.ChargesOnly()))
    after = await harness.job(job.id)
    assert (after.version, after.metrics, after.status) == (
        final.version,
        final.metrics,
        final.status,
    )
    assert [(lead.email, lead.cost_micros) for lead in await harness.leads(job.id)] == [
        (lead.email, lead.cost_micros) for lead in leads
    ]
    async with harness.sessions() as session:
        campaign = await session.get(CampaignRow, final.campaign_id)
    assert campaign is not None and campaign.status == "CANCELLED"
    assert campaign.total_cost_micros == final.metrics["total_cost_micros"]
    assert sum(lead.cost_micros for lead in leads) == final.metrics["total_cost_micros"]


async def test_a_stopping_job_is_final_after_the_stop_timeout(harness: Harness) -> None:
    job = await harness.commands.submit("alice", config(max_results=2), "")
    await harness.apply(discovered(job.id, 2))
    await harness.commands.cancel("alice", job.id)
    assert await harness.watchdog.check_stopping() == 0  # not yet
    await backdate(harness, job.id, "stopping_since", timedelta(minutes=5))
    assert await harness.watchdog.check_stopping() == 1
    row = await harness.job(job.id)
    assert row.status == "CANCELLED" and "did not report" in row.message
    assert {lead.state for lead in await harness.leads(job.id)} == {"stopped"}
    async with harness.sessions() as session:
        unfinished = await session.scalar(
            select(func.count()).select_from(JobRow).where(JobRow.status == "CANCELLING")
        )
    assert unfinished == 0


async def test_a_quiet_job_is_not_retried_while_its_reports_wait_on_the_stream(
    harness: Harness,
) -> None:
    """Its discovery ran and reported, but the report is held up (NATS or the report
    consumers were down): the job is quiet and its work queue idle, yet it is not stalled.
    Queued again, its discovery would run twice, and the first run's money could reach the
    books only after the job had ended (a cancel), so never."""
    job = await harness.commands.submit("alice", config(max_results=2), "")
    await harness.outbox.settle()
    await harness.take(bus.DISCOVERY_CONSUMER, 1)  # a worker ran the task, acked after
    await held_up(harness, discovered(job.id, 2))
    await backdate(harness, job.id, "updated_at", timedelta(seconds=past_stall(harness)))
    assert await harness.watchdog.check_stalled() == 1  # found quiet, but its report waits
    row = await harness.job(job.id)
    assert (row.status, row.attempts) == ("PENDING", 1)
    async with harness.sessions() as session:
        discoveries = await session.scalar(
            select(func.count()).select_from(TaskRow).where(TaskRow.job_id == job.id)
        )
    assert discoveries == 1  # no second discovery queued
    await consume(harness, until=1, partitions=1)
    row = await harness.job(job.id)
    assert (row.stage, row.attempts) == ("ENRICHING", 1)
    assert row.metrics["total_cost_micros"] == 100_000
    assert await harness.watchdog.check_stalled() == 0  # it moved: no longer quiet


async def test_a_report_past_every_delivery_holds_a_quiet_job_up_no_longer(
    harness: Harness,
) -> None:
    """A report that has used up its deliveries stays on the stream, delivered no more:
    waiting for reports is bounded (MAX_DELIVER x ACK_WAIT_S past the stall timeout), so
    the job is retried all the same."""
    job = await harness.commands.submit("alice", config(max_results=2), "")
    await harness.outbox.settle()
    await harness.take(bus.DISCOVERY_CONSUMER, 1)
    await held_up(harness, discovered(job.id, 2))
    s = harness.settings
    waited = past_stall(harness) + s.max_deliver * s.ack_wait_s
    await backdate(harness, job.id, "updated_at", timedelta(seconds=waited))
    assert await harness.watchdog.check_stalled() == 1
    row = await harness.job(job.id)
    assert (row.status, row.attempts) == ("PENDING", 2) and "No progress" in row.message


async def test_a_stopping_job_waits_for_its_reports_still_on_the_stream(
    harness: Harness,
) -> None:
    """A report held up (NATS or the report consumers were down) says what the job's work
    cost: past its stop deadline the job still waits for it, then ends with its money."""
    job = await harness.commands.submit("alice", config(max_results=2), "")
    await harness.commands.cancel("alice", job.id)  # the discovery task is under way
    await held_up(
        harness, report(job.id, "discovery.call1", 0.035, charges_only=work_pb2.ChargesOnly())
    )
    await backdate(
        harness, job.id, "stopping_since", timedelta(seconds=harness.settings.stop_timeout_s + 5.0)
    )
    assert await harness.watchdog.check_stopping() == 1  # found, but its report waits
    assert (await harness.job(job.id)).status == "CANCELLING"
    await consume(harness, until=1, partitions=1)
    assert await harness.watchdog.check_stopping() == 1
    final = await harness.job(job.id)
    assert final.status == "CANCELLED" and final.metrics["total_cost_micros"] == 35_000
