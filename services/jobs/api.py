"""RPC handlers of prospect.v1.JobService: validate, scope to the caller, call; each
handler's errors become statuses through :mod:`services.jobs.statuses` (``@unary``,
``@streaming``)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.common import tracing
from services.common.errors import (
    InvalidArgument,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from services.common.logs import bind_job
from services.jobs import history, metrics, queries, validation
from services.jobs.auth import current_principal
from services.jobs.commands import Commands
from services.jobs.convert import job_proto, lead_proto, snapshot_proto, status_from_proto
from services.jobs.deliveries import WebhookRpcs
from services.jobs.estimator import Estimator, check_limit, validate_max_estimated_cost
from services.jobs.fanout import Fanout, Mailbox
from services.jobs.limits import DistinctUsers, RowBudget
from services.jobs.machine import Status
from services.jobs.page_tokens import PageTokens
from services.jobs.schedule_rpcs import ScheduleRpcs
from services.jobs.statuses import streaming, unary

log = logging.getLogger(__name__)

# A watch ended by this replica's shutdown can resume on another at once; RetryInfo asks
# for a moment first, for a load balancer to see this replica go.
SHUTDOWN_RETRY_S = 0.2

R = TypeVar("R")
# A page of rows of one job: (session, page tokens, job, page size, page token) -> (rows, next).
Lister = Callable[[AsyncSession, PageTokens, Any, int, str], Awaitable[tuple[list[R], str]]]


def traced(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """The RPC in a server span, a child of the caller's when it sent a ``traceparent``
    (a SubmitCampaign's span is its campaign's trace: services/common/tracing.py)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        parent = tracing.grpc_metadata(context.invocation_metadata())
        with tracing.span(handler.__name__, kind=tracing.SERVER, parent=parent):
            return await handler(self, request, context)

    return wrapper


def _user() -> str:
    """The calling user; service tokens may only submit on behalf of a user."""
    principal = current_principal()
    if principal.is_service:
        raise PermissionDenied("service tokens may only submit campaigns")
    return principal.user_id


def _owner_of(request: jobs_pb2.SubmitCampaignRequest) -> str:
    """Whose job a submit creates: the caller's, or for a service token on_behalf_of."""
    principal = current_principal()
    on_behalf_of = request.on_behalf_of
    if principal.is_service:
        return validation.validate_user_id(on_behalf_of, "on_behalf_of")
    if on_behalf_of and on_behalf_of != principal.user_id:
        raise PermissionDenied("on_behalf_of is for service tokens only")
    return principal.user_id


def _terminal(job: jobs_pb2.Job) -> bool:
    return job.status in (
        jobs_pb2.JOB_STATUS_COMPLETED,
        jobs_pb2.JOB_STATUS_FAILED,
        jobs_pb2.JOB_STATUS_CANCELLED,
    )


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        commands: Commands,
        fanout: Fanout,
        tokens: PageTokens,
        *,
        max_watches_per_user: int = 10,
        max_users_per_principal_per_minute: int = 1000,
        list_rows_per_user_per_s: float = 2000.0,
        list_rows_per_user_burst: int = 5000,
        schedules: ScheduleRpcs | None = None,
        webhooks: WebhookRpcs | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        self._estimator = estimator
        self._schedule_rpcs = schedules
        self._webhook_rpcs = webhooks
        self._max_watches = max_watches_per_user
        self._watches: dict[str, int] = {}
        # Per replica, in memory, like the watch count (see services.jobs.limits).
        self._acted_for = DistinctUsers(max_users_per_principal_per_minute)
        self._list_rows = RowBudget(list_rows_per_user_per_s, list_rows_per_user_burst)
        self._sessions = sessions
        self._commands = commands
        self._fanout = fanout
        fanout.read_with(commands.snapshots)  # its watch streams' resync
        self._tokens = tokens
        self._closing = asyncio.Event()

    def begin_shutdown(self) -> None:
        """Open watch streams send the job's latest snapshot (when newer than the client's)
        and end with UNAVAILABLE naming the ``after_version`` to resume from, so a client's
        ordinary retry continues on another replica; a stream that reached its job's
        terminal snapshot ends OK as always."""
        self._closing.set()
        self._fanout.wake_all()  # those waiting for a snapshot see _closing at once

    @unary
    @traced
    async def SubmitCampaign(
        self, request: jobs_pb2.SubmitCampaignRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitCampaignResponse:
        hosts = self._webhook_rpcs.allowed_hosts if self._webhook_rpcs else frozenset()
        config, key = validation.validate_submit(request, allowed_hosts=hosts)
        max_cost = validate_max_estimated_cost(request)
        owner = _owner_of(request)
        principal = current_principal()
        if principal.is_service:
            self._acted_for.admit(principal.user_id, owner)
        if config.notify_url:
            await self._webhooks.require_secret(owner)
        if max_cost:  # no estimate at all otherwise: the submit path stays as fast
            check_limit(await self._estimates.estimate(owner, config), max_cost)
        job = await self._commands.submit(owner, config, key)
        self._fanout.remember(job.id, snapshot_proto(job))  # a watch opened next needs no read
        bind_job(job.id)
        log.info("job %s submitted: %s", job.id, job.status)
        tracing.annotate({tracing.JOB_ID: job.id})
        return jobs_pb2.SubmitCampaignResponse(
            job_id=job.id,
            campaign_id=job.campaign_id,
            status=f"JOB_STATUS_{job.status}",
        )

    @unary
    @traced
    async def EstimateCampaign(
        self, request: jobs_pb2.EstimateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CampaignEstimate:
        if not request.HasField("config"):
            raise InvalidArgument("config", "is required")
        hosts = self._webhook_rpcs.allowed_hosts if self._webhook_rpcs else frozenset()
        config = validation.validate_config(request.config, allowed_hosts=hosts)
        return await self._estimates.estimate(_user(), config)

    @property
    def _estimates(self) -> Estimator:
        if self._estimator is None:
            raise Unavailable("estimates are not served by this replica")
        return self._estimator

    @unary
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        job_id = validation.validate_job_id(request.job_id)
        bind_job(job_id)
        return job_proto(await self._commands.job(_user(), job_id))

    @unary
    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        page_size = validation.validate_page_size(request.page_size)
        status: Status | None = status_from_proto(validation.validate_status(request.status))
        user = _user()
        with self._list_rows.reserve(user, page_size) as listing:
            async with self._sessions() as session:
                rows, token = await queries.list_jobs(
                    session, self._tokens, user, page_size, request.page_token, status
                )
            listing.used = len(rows)
        return jobs_pb2.ListJobsResponse(jobs=[job_proto(r) for r in rows], next_page_token=token)

    @unary
    @traced
    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        job_id = validation.validate_job_id(request.job_id)
        bind_job(job_id)
        tracing.annotate({tracing.JOB_ID: job_id})
        return job_proto(await self._commands.cancel(_user(), job_id))

    async def _job_page(
        self, request: jobs_pb2.ListLeadsRequest | jobs_pb2.ListJobEventsRequest, lister: Lister[R]
    ) -> tuple[list[R], str]:
        """One page of something of the caller's job (its leads, its history): the job id
        and page size checked, the rows counted against the caller's list budget."""
        job_id = validation.validate_job_id(request.job_id)
        bind_job(job_id)
        page_size = validation.validate_page_size(request.page_size)
        user = _user()
        with self._list_rows.reserve(user, page_size) as listing:
            async with self._sessions() as session:
                job = await queries.job_for_user(session, user, job_id)
                rows, token = await lister(
                    session, self._tokens, job, page_size, request.page_token
                )
            listing.used = len(rows)
        return rows, token

    @unary
    async def ListLeads(
        self, request: jobs_pb2.ListLeadsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListLeadsResponse:
        rows, token = await self._job_page(request, queries.list_leads)
        return jobs_pb2.ListLeadsResponse(
            leads=[lead_proto(r) for r in rows], next_page_token=token
        )

    @unary
    @traced
    async def RetryJob(
        self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitCampaignResponse:
        job_id = validation.validate_job_id(request.job_id)
        bind_job(job_id)
        key = validation.validate_idempotency_key(request.idempotency_key)
        job = await self._commands.retry(_user(), job_id, key)
        log.info("job %s retried as %s", job_id, job.id)
        tracing.annotate({tracing.JOB_ID: job.id})
        return jobs_pb2.SubmitCampaignResponse(
            job_id=job.id, campaign_id=job.campaign_id, status=f"JOB_STATUS_{job.status}"
        )

    @unary
    async def ListJobEvents(
        self, request: jobs_pb2.ListJobEventsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobEventsResponse:
        rows, token = await self._job_page(request, history.list_events)
        return jobs_pb2.ListJobEventsResponse(
            events=[history.event_proto(r) for r in rows], next_page_token=token
        )

    # Schedules: services/jobs/schedule_rpcs.py ------------------------------------------

    @property
    def _schedules(self) -> ScheduleRpcs:
        if self._schedule_rpcs is None:
            raise Unavailable("schedules are not served by this replica")
        return self._schedule_rpcs

    @unary
    @traced
    async def CreateSchedule(
        self, request: jobs_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Schedule:
        user = _user()
        if request.notify_url and self._webhook_rpcs is not None:
            await self._webhooks.require_secret(user)  # as SubmitCampaign's notify_url
        return await self._schedules.create(user, request)

    @unary
    async def GetSchedule(
        self, request: jobs_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Schedule:
        return await self._schedules.get(_user(), request)

    @unary
    async def ListSchedules(
        self, request: jobs_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListSchedulesResponse:
        return await self._schedules.list(_user(), request)

    @unary
    async def PauseSchedule(
        self, request: jobs_pb2.ScheduleRef, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Schedule:
        return await self._schedules.set_paused(_user(), request, paused=True)

    @unary
    async def ResumeSchedule(
        self, request: jobs_pb2.ScheduleRef, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Schedule:
        return await self._schedules.set_paused(_user(), request, paused=False)

    @unary
    async def DeleteSchedule(
        self, request: jobs_pb2.ScheduleRef, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._schedules.delete(_user(), request)
        return empty_pb2.Empty()

    @unary
    @traced
    async def TriggerSchedule(
        self, request: jobs_pb2.ScheduleRef, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitCampaignResponse:
        answer = await self._schedules.trigger(_user(), request)
        tracing.annotate({tracing.JOB_ID: answer.job_id})
        return answer

    # Completion webhooks: services/jobs/deliveries.py ------------------------------------

    @property
    def _webhooks(self) -> WebhookRpcs:
        if self._webhook_rpcs is None:
            raise Unavailable("webhooks are not served by this replica")
        return self._webhook_rpcs

    @unary
    async def RotateWebhookSecret(
        self, request: jobs_pb2.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.WebhookSecret:
        return await self._webhooks.rotate(_user())

    @unary
    async def ListDeliveries(
        self, request: jobs_pb2.ListDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListDeliveriesResponse:
        job_id = validation.validate_job_id(request.job_id) if request.job_id else ""
        page_size = validation.validate_page_size(request.page_size)
        user = _user()
        with self._list_rows.reserve(user, page_size) as listing:
            page = await self._webhooks.list(user, job_id, page_size, request.page_token)
            listing.used = len(page.deliveries)
        return page

    async def _snapshot(self, user: str, job_id: str) -> jobs_pb2.JobUpdate:
        return snapshot_proto(await self._commands.job(user, job_id))

    async def _next_update(self, mailbox: Mailbox, user: str, job_id: str) -> jobs_pb2.JobUpdate:
        """The next snapshot the fan-out hands over (the newest, when several wait: one
        announced, or the job read again after a quiet spell); the job read by this stream
        when the fan-out says look again (a job its resync did not find). At shutdown the
        look-again comes back as it is: the stream sees the service closing and reads the
        job itself.

        The stream waits on its mailbox alone, with no task and no timer of its own: with
        10,000 streams open, a task for the get and one for the shutdown event made and
        cancelled at every wait kept most of a core busy (so busy that gRPC core cancelled
        new WatchJob calls the event loop had not yet taken up, after 30 s:
        ``grpc.server_max_unrequested_time_in_server``), and a timeout's timer at every
        wait still cost a tenth of the process's time."""
        update = await mailbox.get()
        if update.job.version or self._closing.is_set():
            return update
        return await self._snapshot(user, job_id)

    @streaming
    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobUpdate]:
        job_id = validation.validate_job_id(request.job_id)
        bind_job(job_id)
        if request.after_version < 0:
            raise InvalidArgument("after_version", "must not be negative")
        user = _user()
        if self._watches.get(user, 0) >= self._max_watches:
            raise ResourceExhausted(
                f"too many open watch streams ({self._max_watches}, MAX_WATCHES_PER_USER)",
                reason=Reason.WATCH_LIMIT,
                subject=f"user:{user}",
                quota=f"at most {self._max_watches} open watch streams per user "
                "(MAX_WATCHES_PER_USER)",
                metadata={"setting": "MAX_WATCHES_PER_USER", "limit": str(self._max_watches)},
            )
        self._watches[user] = self._watches.get(user, 0) + 1
        metrics.WATCH_STREAMS.inc()
        try:
            async for update in self._watch(user, job_id, request.after_version):
                yield update
                # Written to the stream: from the report behind it (if any) to here.
                metrics.update_sent(update.report_published_at.ToNanoseconds())
        finally:
            metrics.WATCH_STREAMS.dec()
            self._watches[user] -= 1
            if not self._watches[user]:
                del self._watches[user]

    async def _watch(
        self, user: str, job_id: str, after_version: int
    ) -> AsyncIterator[jobs_pb2.JobUpdate]:
        """Snapshots of ``job_id`` newer than ``after_version``, ending OK after the terminal
        one; on shutdown, the latest snapshot then :class:`Unavailable`."""
        # Listen before reading the snapshot, so no change falls between the two; a
        # snapshot the fan-out heard lately stands for the read (services/jobs/fanout.py).
        async with self._fanout.watch(job_id) as mailbox:
            update = self._fanout.recent(job_id, user) or await self._snapshot(user, job_id)
            last = after_version
            latest_read_on_closing = False
            while True:
                if update.job.version > last:
                    last = update.job.version
                    yield update
                if _terminal(update.job):
                    return  # sent now, or the caller had it already
                if latest_read_on_closing:
                    # Not OK: a client reads OK as "the job is done"; UNAVAILABLE is what its
                    # retry logic resumes on, at another replica.
                    raise Unavailable(
                        f"jobs service shutting down; watch again with after_version={last}",
                        metadata={"job_id": job_id, "after_version": str(last)},
                        retry_after=SHUTDOWN_RETRY_S,
                    )
                if self._closing.is_set():
                    # A fresh read: the mailbox may hold an older snapshot than the database.
                    latest_read_on_closing = True
                    update = await self._snapshot(user, job_id)
                else:
                    update = await self._next_update(mailbox, user, job_id)
