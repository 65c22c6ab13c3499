"""End to end, against a JWT-secured stack whose sandbox calls take 5 s (so jobs stay
unfinished while a test runs): each user has at most MAX_ACTIVE_JOBS_PER_USER unfinished
jobs (a service token submitting for them included) and MAX_WATCHES_PER_USER open
watches, other users unaffected, a slot freed by a cancel or a closed stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from tests.e2e import tokens as t
from tests.e2e.secured_stack import AUTH_ENV, SERVICE, as_user
from tests.e2e.tokens import Metadata, failure, job_ids, submit

pytestmark = pytest.mark.e2e

Code = grpc.StatusCode
LIMITED_ENV = AUTH_ENV | {"SANDBOX_LATENCY_MS": "5000", "SHUTDOWN_GRACE_S": "2"}
LIMITED_ENV |= {"MAX_ACTIVE_JOBS_PER_USER": "3", "MAX_WATCHES_PER_USER": "2"}
UNFINISHED = {jobs_pb2.JOB_STATUS_PENDING, jobs_pb2.JOB_STATUS_PROCESSING}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    """Slow sandbox calls (5 s each), so jobs stay unfinished while a test runs."""
    running = Stack(tmp_path_factory.mktemp("limited"), env=LIMITED_ENV)
    try:
        running.start()
        with grpc.insecure_channel(running.jobs_addr) as channel:
            yield jobs_pb2_grpc.JobServiceStub(channel)
    finally:
        running.stop()


def test_active_jobs_per_user_are_limited(limited: jobs_pb2_grpc.JobServiceStub) -> None:
    carol, dave = as_user("carol"), as_user("dave")
    try:
        jobs = [submit(limited, carol, idempotency_key="first")]
        jobs += [submit(limited, carol) for _ in range(2)]
        for job_id in jobs:
            got = limited.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=carol)
            assert got.status in UNFINISHED, "jobs finished too fast for this test"
        code, details = failure(partial(submit, limited, carol))
        assert code == Code.RESOURCE_EXHAUSTED and "at most 3" in details
        code, _ = failure(partial(submit, limited, SERVICE, on_behalf_of="carol"))
        assert code == Code.RESOURCE_EXHAUSTED  # the owner's limit, not the caller's
        assert submit(limited, carol, idempotency_key="first") == jobs[0]  # a resubmit is fine
        assert submit(limited, dave)  # other users are unaffected
        limited.CancelJob(jobs_pb2.CancelJobRequest(job_id=jobs[1]), metadata=carol)
        jobs.append(submit(limited, carol))  # the cancelled job freed its slot
        assert failure(partial(submit, limited, carol))[0] == Code.RESOURCE_EXHAUSTED
        assert len(job_ids(limited, carol)) == 4
    finally:
        t.cancel_all(limited, carol)
        t.cancel_all(limited, dave)


def test_watch_streams_per_user_are_limited(limited: jobs_pb2_grpc.JobServiceStub) -> None:
    erin, frank = as_user("erin"), as_user("frank")
    streams = []

    def watch(md: Metadata, job_id: str) -> jobs_pb2.JobUpdate:
        stream = limited.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), metadata=md, timeout=60)
        streams.append(stream)
        return next(stream)  # the first snapshot: the stream is open on the server

    try:
        erins, franks = submit(limited, erin), submit(limited, frank)
        assert watch(erin, erins).job.id == erins and watch(erin, erins).job.id == erins
        code, details = failure(partial(watch, erin, erins))
        assert code == Code.RESOURCE_EXHAUSTED and "MAX_WATCHES_PER_USER" in details
        assert watch(frank, franks) and watch(frank, franks)  # per user
        streams[0].cancel()
        deadline = time.monotonic() + 10  # the server notices the cancel within moments
        while True:
            try:
                assert watch(erin, erins).job.id == erins
                break
            except grpc.RpcError as err:
                assert err.code() == Code.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "a closed watch still counts"
                time.sleep(0.1)
    finally:
        for stream in streams:
            stream.cancel()
        t.cancel_all(limited, erin)
        t.cancel_all(limited, frank)
