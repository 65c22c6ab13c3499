"""Schedules end to end (issue 17): fires on time with an interval of a few seconds, pause and
resume, deletion stops fires, one job per fire time with two jobs replicas and one killed
at a fire moment, HTTP routes, the CLI, and only_new_leads paying nothing twice against the
fake providers. Assertions count what happened (jobs, fires, requests), never durations."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import grpc
import httpx
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import job_service, list_all_leads
from services.cli.stack import Stack
from tests.e2e.cli import ok, run_cli
from tests.e2e.on_fakes import campaign, running_stack, wait_all_terminal
from tests.fakes import FakeProviders
from tests.fakes.base import RequestRecord

pytestmark = pytest.mark.e2e

FAST = {
    "SCHEDULE_MIN_INTERVAL_S": "1",
    "SCHEDULER_POLL_S": "0.2",
    "MAX_SCHEDULES_PER_USER": "6",
    "MAX_ACTIVE_JOBS_PER_USER": "200",
    "SANDBOX_LATENCY_MS": "5",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("schedules"), env=FAST)
    running.start()
    try:
        yield running
    except BaseException:
        print(running.log_tails(60))
        raise
    finally:
        running.stop()


def interval_request(seconds: float, **kwargs: object) -> jobs_pb2.CreateScheduleRequest:
    spec = jobs_pb2.ScheduleSpec()
    spec.interval.FromTimedelta(timedelta(seconds=seconds))
    config = jobs_pb2.CampaignConfig(
        business_type="bakery", location="Lyon", max_results=3, min_confidence_score=0
    )
    return jobs_pb2.CreateScheduleRequest(config=config, spec=spec, **kwargs)  # type: ignore[arg-type]


async def scheduled_jobs(
    stub: jobs_pb2_grpc.JobServiceStub, schedule_id: str
) -> list[jobs_pb2.Job]:
    jobs: list[jobs_pb2.Job] = []
    token = ""
    while True:
        page = await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=500, page_token=token))
        jobs.extend(j for j in page.jobs if j.schedule_id == schedule_id)
        if not (token := page.next_page_token):
            return jobs


async def schedule_of(stub: jobs_pb2_grpc.JobServiceStub, schedule_id: str) -> jobs_pb2.Schedule:
    return await stub.GetSchedule(jobs_pb2.GetScheduleRequest(schedule_id=schedule_id), timeout=10)


async def fired_at_least(
    stub: jobs_pb2_grpc.JobServiceStub, schedule_id: str, count: int, within: float = 30.0
) -> jobs_pb2.Schedule:
    deadline = time.monotonic() + within
    while True:
        schedule = await schedule_of(stub, schedule_id)
        if schedule.fire_count >= count:
            return schedule
        if time.monotonic() > deadline:
            pytest.fail(f"schedule {schedule_id} fired {schedule.fire_count}, not {count}")
        await asyncio.sleep(0.1)


def ref(schedule_id: str) -> jobs_pb2.ScheduleRef:
    return jobs_pb2.ScheduleRef(schedule_id=schedule_id)


async def test_interval_schedule_fires_jobs_linked_to_it_then_pause_resume_delete(
    stack: Stack,
) -> None:
    async with job_service(stack.jobs_addr) as stub:
        schedule = await stub.CreateSchedule(interval_request(1.5))
        assert schedule.schedule_id.startswith("sch_") and len(schedule.schedule_id) == 36
        assert len(schedule.next_fire_times) == 5
        times = [t.ToDatetime(UTC) for t in schedule.next_fire_times]
        assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(seconds=1.5)] * 4
        sid = schedule.schedule_id

        fired = await fired_at_least(stub, sid, 2)
        jobs = await scheduled_jobs(stub, sid)
        assert len(jobs) == fired.fire_count or len(jobs) >= 2
        assert fired.last_job_id in {j.id for j in jobs}

        paused = await stub.PauseSchedule(ref(sid))
        assert paused.paused and not paused.next_fire_times
        before = len(await scheduled_jobs(stub, sid))
        await asyncio.sleep(4)  # more than two intervals: none may fire while paused
        assert len(await scheduled_jobs(stub, sid)) == before
        assert (await schedule_of(stub, sid)).fire_count == before

        resumed = await stub.ResumeSchedule(ref(sid))
        assert not resumed.paused and resumed.next_fire_times
        await fired_at_least(stub, sid, before + 1)

        await stub.DeleteSchedule(ref(sid))
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await schedule_of(stub, sid)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        after = len(await scheduled_jobs(stub, sid))
        await asyncio.sleep(4)
        assert len(await scheduled_jobs(stub, sid)) == after  # jobs stay, no new ones
        assert after >= before + 1


async def test_trigger_runs_now_and_validation_and_limits(stack: Stack) -> None:
    async with job_service(stack.jobs_addr) as stub:
        schedule = await stub.CreateSchedule(interval_request(3600, idempotency_key="k1"))
        again = await stub.CreateSchedule(interval_request(3600, idempotency_key="k1"))
        assert again.schedule_id == schedule.schedule_id
        answer = await stub.TriggerSchedule(ref(schedule.schedule_id))
        job = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=answer.job_id))
        assert job.schedule_id == schedule.schedule_id
        assert (await schedule_of(stub, schedule.schedule_id)).fire_count == 1

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateSchedule(interval_request(0.5))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.interval" in (refused.value.details() or "")
        cron = jobs_pb2.CreateScheduleRequest(
            config=interval_request(60).config,
            spec=jobs_pb2.ScheduleSpec(cron="0 9 * * *", time_zone="Nowhere/Land"),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateSchedule(cron)
        assert "spec.time_zone" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetSchedule(jobs_pb2.GetScheduleRequest(schedule_id="sch_" + "0" * 32))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND

        newer = await stub.CreateSchedule(interval_request(3600))
        page = await stub.ListSchedules(jobs_pb2.ListSchedulesRequest(page_size=1))
        assert [s.schedule_id for s in page.schedules] == [newer.schedule_id]
        request = jobs_pb2.ListSchedulesRequest(page_size=1, page_token=page.next_page_token)
        page = await stub.ListSchedules(request)
        assert [s.schedule_id for s in page.schedules] == [schedule.schedule_id]
        codes = []
        for _ in range(int(FAST["MAX_SCHEDULES_PER_USER"]) + 1):
            try:
                await stub.CreateSchedule(interval_request(3600))
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
        assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        listed = await stub.ListSchedules(jobs_pb2.ListSchedulesRequest(page_size=100))
        for s in listed.schedules:
            await stub.DeleteSchedule(ref(s.schedule_id))


def test_http_routes_and_cli(stack: Stack) -> None:
    with httpx.Client(base_url=stack.web_url, timeout=10) as http:
        body = {
            "config": {"businessType": "florist", "location": "Nantes", "maxResults": 3},
            "spec": {"cron": "0 9 * * MON-FRI", "timeZone": "Europe/Paris"},
            "onlyNewLeads": True,
        }
        created = http.post("/v1/schedules", json=body)
        assert created.status_code == 200, created.text
        sid = created.json()["scheduleId"]
        got = http.get(f"/v1/schedules/{sid}")
        assert got.status_code == 200 and got.json()["onlyNewLeads"] is True
        assert len(got.json()["nextFireTimes"]) == 5
        assert http.post(f"/v1/schedules/{sid}:pause").json()["paused"] is True
        assert sid in {s["scheduleId"] for s in http.get("/v1/schedules").json()["schedules"]}

    addr = stack.jobs_addr
    out = ok(run_cli(addr, "schedule", "get", sid))
    assert "florist in Nantes" in out and "(paused)" in out
    out = ok(run_cli(addr, "schedule", "create", "baker", "Paris", "--every", "1h"))
    other = out.split()[1].rstrip(":")
    assert "every 1h" in ok(run_cli(addr, "schedule", "list"))
    assert "submitted job" in ok(run_cli(addr, "schedule", "trigger", other))
    for schedule_id in (sid, other):
        ok(run_cli(addr, "schedule", "delete", schedule_id))


def _fires_and_jobs(db: Path, schedule_id: str) -> tuple[list[tuple[str, str]], set[str]]:
    with sqlite3.connect(db) as conn:
        fires = conn.execute(
            "SELECT fire_at, job_id FROM schedule_fires WHERE schedule_id = ?", (schedule_id,)
        ).fetchall()
        jobs = {r[0] for r in conn.execute("SELECT id FROM jobs WHERE schedule_id = ?",
                                           (schedule_id,))}  # fmt: skip
    return fires, jobs


async def test_one_job_per_fire_time_with_two_replicas_and_one_killed(tmp_path: Path) -> None:
    running = Stack(tmp_path, env=FAST)
    running.start()
    try:
        second = running.start_jobs_replica()
        assert second.grpc_addr is not None
        async with job_service(second.grpc_addr) as stub:
            schedule = await stub.CreateSchedule(interval_request(1.0))
            sid = schedule.schedule_id
            created = schedule.created_at.ToDatetime(UTC)
            await fired_at_least(stub, sid, 2)
            # Kill the first replica right at a fire moment: both were polling for it.
            nxt = (await schedule_of(stub, sid)).next_fire_times[0].ToDatetime(UTC)
            await asyncio.sleep(max(0.0, (nxt - datetime.now(UTC)).total_seconds()))
            await asyncio.to_thread(running.processes["jobs"].kill)
            count = (await schedule_of(stub, sid)).fire_count
            await fired_at_least(stub, sid, count + 3)
            await asyncio.to_thread(running.processes["jobs"].restart)
            await fired_at_least(stub, sid, count + 6)
            await stub.PauseSchedule(ref(sid))
        fires, jobs = _fires_and_jobs(tmp_path / "prospect.db", sid)
    finally:
        running.stop()
    fire_times = [datetime.fromisoformat(f).replace(tzinfo=UTC) for f, _ in fires]
    assert len(fires) == len(jobs), "every job of the schedule has its fire, and no more"
    assert {job for _, job in fires} == jobs
    assert len(set(fire_times)) == len(fire_times)
    # Every fire time is on the schedule's grid: two jobs never share one.
    offsets = {(t - created) / timedelta(seconds=1) for t in fire_times}
    assert all(abs(o - round(o)) < 1e-6 for o in offsets), offsets
    assert len({round(o) for o in offsets}) == len(fires)


def _details_bought(requests: list[RequestRecord]) -> list[str]:
    """The place ids of the Place Details requests among ``requests``."""
    return [r.path.rsplit("/", 1)[-1] for r in requests if r.path.startswith("/v1/places/")]


def _verified(requests: list[RequestRecord]) -> set[str]:
    """The emails NeverBounce was asked to verify (a form-encoded POST)."""
    return {
        value
        for r in requests
        for value in parse_qs(r.body.decode()).get("email", [r.query.get("email", "")])
    }


async def test_only_new_leads_pays_nothing_twice(tmp_path: Path) -> None:
    fakes = FakeProviders(places_per_query=25, every_domain_has_emails=True)
    with fakes, running_stack(tmp_path, fakes, FAST) as running:
        async with job_service(running.jobs_addr) as stub:
            config = campaign("Bordeaux", max_results=5)
            spec = jobs_pb2.ScheduleSpec()
            spec.interval.FromTimedelta(timedelta(hours=1))
            schedule = await stub.CreateSchedule(
                jobs_pb2.CreateScheduleRequest(config=config, spec=spec, only_new_leads=True)
            )
            sid = schedule.schedule_id

            first = await stub.TriggerSchedule(ref(sid))
            await wait_all_terminal(stub, [first.job_id], 90)
            known = {lead.place_id for lead in await list_all_leads(stub, first.job_id)}
            first_leads = await list_all_leads(stub, first.job_id)
            known_sites = {lead.website for lead in first_leads}
            known_emails = {lead.email for lead in first_leads if lead.email}
            assert len(known) == 5
            seen = {f: len(f.requests) for f in fakes.fakes}

            second = await stub.TriggerSchedule(ref(sid))
            done = await wait_all_terminal(stub, [second.job_id], 90)
            job = done[second.job_id]
            leads = await list_all_leads(stub, second.job_id)

    assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job
    assert job.metrics.leads_skipped_known == len(known)
    assert not {lead.place_id for lead in leads} & known
    earlier = {f: f.requests[: seen[f]] for f in fakes.fakes}
    later = {f: f.requests[seen[f] :] for f in fakes.fakes}
    hosts = {httpx.URL(site).host.removeprefix("www.") for site in known_sites if site}
    # The first run paid Hunter for these places (so their absence below means something).
    # Google's details come with the search (one Text Search Enterprise request per page):
    # a second run pays its search, never details for a known place.
    assert hosts and hosts <= {r.query.get("domain", "") for r in earlier[fakes.hunter]}
    assert not set(_details_bought(later[fakes.google])) & known, "details bought again"
    paid_again = [r for r in later[fakes.hunter] if r.query.get("domain", "") in hosts]
    assert not paid_again, "Hunter asked again about a known place"
    assert known_emails and known_emails <= _verified(earlier[fakes.neverbounce])
    assert not _verified(later[fakes.neverbounce]) & known_emails, "verified a known email again"
    assert later[fakes.google], "the second run searched (discovery is paid on every run)"
    assert len(leads) > 0 and all(not lead.email or "@" in lead.email for lead in leads)
