"""Async helpers over ``prospect.v1.JobService`` shared by the CLI, the demo and tests.

The one with a promise worth reading: :func:`watch_until_done` follows a job to its
terminal snapshot across server restarts and dropped streams, resuming each time from
the last version it saw, so no update is shown twice and the end is never missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from prospect.v1 import jobs_pb2, jobs_pb2_grpc

TERMINAL_STATUSES = frozenset(
    {jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED}
)
# Errors after which the same watch is opened again: the server went away or the stream broke.
_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
_BROKEN_STREAM = ("rst_stream", "stream removed", "socket closed", "connection reset", "goaway")

# How long a watch retries when it never got a single answer from the server.
NEVER_CONNECTED_RETRY_S = 10.0

UpdateHandler = Callable[[jobs_pb2.JobUpdate], None]
RetryHandler = Callable[[str, float], None]  # (why the stream ended, seconds before retrying)


class WatchError(Exception):
    """The watch could not be resumed for longer than its retry budget."""


def is_terminal(status: int) -> bool:
    """COMPLETED, FAILED and CANCELLED are final: a job in them never changes again."""
    return status in TERMINAL_STATUSES


def is_retryable(err: grpc.aio.AioRpcError) -> bool:
    """Whether a watch that failed with ``err`` should be opened again."""
    if err.code() in _RETRY_CODES:
        return True
    details = (err.details() or "").lower()
    return err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(
        marker in details for marker in _BROKEN_STREAM
    )


class _TokenMetadata:
    """Adds ``authorization: Bearer <token>`` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _with_token(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
        metadata.add("authorization", f"Bearer {self._token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _BearerToken(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _BearerTokenStreams(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    """grpc.aio files each interceptor under one call type only, so server-streaming calls
    need an object of their own."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


@contextlib.asynccontextmanager
async def job_service(
    addr: str, *, token: str | None = None, tls_ca: str | None = None
) -> AsyncIterator[jobs_pb2_grpc.JobServiceStub]:
    """A stub on a channel to ``addr``, closed on exit; ``token`` for JWT auth, ``tls_ca``
    (a PEM file) for TLS."""
    interceptors: list[Any] | None = (
        [_BearerToken(token), _BearerTokenStreams(token)] if token else None
    )
    if tls_ca:
        ca = Path(tls_ca).read_bytes()  # noqa: ASYNC240 (a small local file, read once)
        credentials = grpc.ssl_channel_credentials(ca)
        channel = grpc.aio.secure_channel(addr, credentials, interceptors=interceptors)
    else:
        channel = grpc.aio.insecure_channel(addr, interceptors=interceptors)
    async with channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


def campaign_request(
    business_type: str,
    location: str,
    *,
    max_results: int = 10,
    min_score: int = 50,
    budget: float = 0.0,
    verify_emails: bool = True,
    idempotency_key: str = "",
) -> jobs_pb2.SubmitCampaignRequest:
    """A SubmitCampaign request with the CLI's defaults."""
    config = jobs_pb2.CampaignConfig(
        business_type=business_type,
        location=location,
        max_results=max_results,
        min_confidence_score=min_score,
        budget_limit=budget,
        verify_emails=verify_emails,
    )
    return jobs_pb2.SubmitCampaignRequest(config=config, idempotency_key=idempotency_key)


def add_campaign_options(parser: argparse.ArgumentParser, *, per_run: bool = False) -> None:
    """``BUSINESS_TYPE LOCATION`` and the campaign options of ``submit``, ``estimate`` and
    ``schedule create`` (read back by :func:`campaign_config`)."""
    parser.add_argument("business_type", help='e.g. "coffee shop"')
    parser.add_argument("location", help='e.g. "Seattle, WA"')
    parser.add_argument("--max-results", type=int, default=10, help="leads kept (default 10)")
    parser.add_argument(
        "--min-score", type=int, default=50, help="minimum score 0-100 (default 50)"
    )
    budget = "USD cap per run; 0 = none" if per_run else "USD cap on spend; 0 = none"
    parser.add_argument("--budget", type=float, default=0.0, help=budget)
    parser.add_argument("--no-verify", action="store_true", help="do not verify emails")
    parser.add_argument(
        "--target-verified-emails",
        type=int,
        default=0,
        metavar="N",
        help="stop enriching once N verified emails are in (0 = no goal)",
    )


def campaign_config(args: argparse.Namespace) -> jobs_pb2.CampaignConfig:
    """The campaign config of :func:`add_campaign_options`' arguments."""
    config = campaign_request(
        args.business_type,
        args.location,
        max_results=args.max_results,
        min_score=args.min_score,
        budget=args.budget,
        verify_emails=not args.no_verify,
    ).config
    config.target_verified_emails = args.target_verified_emails
    return config


async def watch_until_done(
    stub: jobs_pb2_grpc.JobServiceStub,
    job_id: str,
    on_update: UpdateHandler,
    *,
    after_version: int = 0,
    on_retry: RetryHandler | None = None,
    retry_for: float = 120.0,
    first_backoff: float = 0.2,
    max_backoff: float = 2.0,
) -> jobs_pb2.Job:
    """Watch ``job_id`` until its terminal snapshot, which is returned.

    ``on_update`` sees each update whose version is above every version seen before.
    UNAVAILABLE (what a jobs replica shutting down ends its streams with), a broken stream
    or a stream that ends early reopens the watch with ``after_version`` = the last version
    seen, after a backoff doubling from ``first_backoff`` to ``max_backoff``. Other errors
    (NOT_FOUND, ...) are raised as they are; :class:`WatchError` after ``retry_for``
    seconds without a successful reconnect.
    """
    last_version = after_version
    backoff = first_backoff
    failing_since: float | None = None
    loop = asyncio.get_running_loop()

    connected = False

    def accept(update: jobs_pb2.JobUpdate) -> bool:
        nonlocal last_version, backoff, failing_since, connected
        backoff, failing_since, connected = first_backoff, None, True
        if update.job.version <= last_version:
            return False  # already shown (a replay after a reconnect, or another replica)
        last_version = update.job.version
        on_update(update)
        return is_terminal(update.job.status)

    while True:
        call = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, after_version=last_version))
        try:
            async for update in call:
                if accept(update):
                    return update.job
            # Ended OK without the terminal snapshot: a job already final at or below
            # after_version, or a server from before shutdowns ended streams UNAVAILABLE
            # (which the except below resumes). GetJob tells the two apart.
            job = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)
            if is_terminal(job.status):
                if job.version > last_version:
                    accept(jobs_pb2.JobUpdate(job=job))
                return job
            reason = "stream ended before the job finished"
        except grpc.aio.AioRpcError as err:
            if not is_retryable(err):
                raise
            reason = f"{err.code().name}: {err.details()}"
        finally:
            call.cancel()
        now = loop.time()
        failing_since = failing_since if failing_since is not None else now
        # Never reached the server at all: most likely a wrong address, so give up sooner.
        limit = retry_for if connected else min(retry_for, NEVER_CONNECTED_RETRY_S)
        if now - failing_since > limit:
            raise WatchError(f"gave up watching {job_id} after {limit:.0f}s: {reason}")
        if on_retry is not None:
            on_retry(reason, backoff)
        await asyncio.sleep(backoff)
        backoff = min(max_backoff, backoff * 2)


async def iter_leads(
    stub: jobs_pb2_grpc.JobServiceStub,
    job_id: str,
    *,
    page_size: int = 100,
    rpc_timeout: float = 30.0,
) -> AsyncIterator[jobs_pb2.Lead]:
    """Every lead of ``job_id``, following ``next_page_token`` to the last page."""
    token = ""
    while True:
        request = jobs_pb2.ListLeadsRequest(job_id=job_id, page_size=page_size, page_token=token)
        page = await stub.ListLeads(request, timeout=rpc_timeout)
        for lead in page.leads:
            yield lead
        token = page.next_page_token
        if not token:
            return


async def list_all_leads(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, *, page_size: int = 100
) -> list[jobs_pb2.Lead]:
    return [lead async for lead in iter_leads(stub, job_id, page_size=page_size)]
