"""The schedule RPCs behind ``api.JobService``: requests validated, scoped to the caller,
answered as messages. ``api.py`` keeps only the glue (who calls, errors to statuses)."""

from __future__ import annotations

import logging

from prospect.v1 import jobs_pb2
from services.common.logs import bind_job
from services.jobs import validation
from services.jobs.scheduler import Scheduler
from services.jobs.schedules import Schedules, schedule_proto, validate_schedule_id

log = logging.getLogger(__name__)


class ScheduleRpcs:
    def __init__(self, schedules: Schedules, scheduler: Scheduler) -> None:
        self._schedules = schedules
        self._scheduler = scheduler

    async def create(
        self, user_id: str, request: jobs_pb2.CreateScheduleRequest
    ) -> jobs_pb2.Schedule:
        row = await self._schedules.create(user_id, request)
        log.info("schedule %s created, next fire at %s", row.id, row.next_fire_at)
        return schedule_proto(row)

    async def get(self, user_id: str, request: jobs_pb2.GetScheduleRequest) -> jobs_pb2.Schedule:
        schedule_id = validate_schedule_id(request.schedule_id)
        return schedule_proto(await self._schedules.get(user_id, schedule_id))

    async def list(
        self, user_id: str, request: jobs_pb2.ListSchedulesRequest
    ) -> jobs_pb2.ListSchedulesResponse:
        page_size = validation.validate_page_size(request.page_size)
        rows, token = await self._schedules.list(user_id, page_size, request.page_token)
        return jobs_pb2.ListSchedulesResponse(
            schedules=[schedule_proto(r) for r in rows], next_page_token=token
        )

    async def set_paused(
        self, user_id: str, request: jobs_pb2.ScheduleRef, paused: bool
    ) -> jobs_pb2.Schedule:
        schedule_id = validate_schedule_id(request.schedule_id)
        row = await self._schedules.set_paused(user_id, schedule_id, paused)
        log.info("schedule %s %s", schedule_id, "paused" if paused else "resumed")
        return schedule_proto(row)

    async def delete(self, user_id: str, request: jobs_pb2.ScheduleRef) -> None:
        schedule_id = validate_schedule_id(request.schedule_id)
        await self._schedules.delete(user_id, schedule_id)
        log.info("schedule %s deleted", schedule_id)

    async def trigger(
        self, user_id: str, request: jobs_pb2.ScheduleRef
    ) -> jobs_pb2.SubmitCampaignResponse:
        schedule_id = validate_schedule_id(request.schedule_id)
        job = await self._scheduler.trigger(user_id, schedule_id)
        bind_job(job.id)
        log.info("schedule %s triggered: job %s", schedule_id, job.id)
        return jobs_pb2.SubmitCampaignResponse(
            job_id=job.id, campaign_id=job.campaign_id, status=f"JOB_STATUS_{job.status}"
        )
