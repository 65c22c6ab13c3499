"""A jobs replica shutting down ends open watch streams with UNAVAILABLE, not OK.

OK would tell a gRPC client the stream is complete; UNAVAILABLE is what retry logic
resumes on. The stream first sends the job's latest snapshot, and its message names the
``after_version`` to resume from, so a watch continues on another replica with nothing
shown twice and nothing missed.

The job is held still, not merely slowed: the fake Hunter holds its answers, so the
campaign stops in ENRICHING with an email search in flight and cannot finish before the
test releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from prospect.v1 import jobs_pb2
from services.cli.client import is_terminal, job_service, watch_until_done
from services.cli.stack import Stack
from tests.e2e.on_fakes import running_stack, until
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

SHUTDOWN_GRACE_S = 5.0
ENV = {
    "SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
    # A held Hunter search must stay in flight, not time out into a retry or a failure.
    "PROVIDER_TIMEOUT_S": "120",
}
STREAM_END_S = 30.0  # guards against a hang only; nothing is asserted about timing
SHUTDOWN = "jobs service shutting down; watch again with after_version={}"


@contextlib.contextmanager
def held_campaign_stack(data_dir: Path, fakes: FakeProviders) -> Iterator[Stack]:
    """A stack on ``fakes`` with Hunter holding its answers (see ``running_stack``)."""
    fakes.hunter.hold()
    with running_stack(data_dir, fakes, ENV) as stack:
        yield stack


def enriching(job: jobs_pb2.Job) -> bool:
    return job.status == jobs_pb2.JOB_STATUS_PROCESSING and job.stage == jobs_pb2.STAGE_ENRICHING


async def read_until(
    call: grpc.aio.UnaryStreamCall, done: Callable[[jobs_pb2.Job], bool]
) -> list[jobs_pb2.JobUpdate]:
    """Updates of ``call`` up to the first whose job is ``done``."""
    seen: list[jobs_pb2.JobUpdate] = []
    async with asyncio.timeout(120):
        while True:
            update = await call.read()
            assert update is not grpc.aio.EOF, f"stream ended after {versions(seen)}"
            seen.append(update)
            if done(update.job):
                return seen


async def read_to_end(
    call: grpc.aio.UnaryStreamCall, seen: list[jobs_pb2.JobUpdate] | None = None
) -> list[jobs_pb2.JobUpdate]:
    """Every update left on ``call``, appended to ``seen`` as it arrives (so they are kept
    when the stream then ends with an error, which is raised)."""
    seen = [] if seen is None else seen
    async with asyncio.timeout(STREAM_END_S):
        while (update := await call.read()) is not grpc.aio.EOF:
            seen.append(update)
    return seen


def versions(updates: list[jobs_pb2.JobUpdate]) -> list[int]:
    return [u.job.version for u in updates]


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


@dataclass
class ResumingWatcher:
    """:func:`watch_until_done` on its own channel, recording what it sees and each resume
    with the versions it had seen by then."""

    job_id: str
    versions: list[int] = field(default_factory=list)
    resumes: list[tuple[str, int]] = field(default_factory=list)  # (why, last version seen)
    final: jobs_pb2.Job | None = None

    async def run(self, target: str) -> None:
        def on_update(update: jobs_pb2.JobUpdate) -> None:
            self.versions.append(update.job.version)

        def on_retry(why: str, _backoff: float) -> None:
            self.resumes.append((why, self.versions[-1] if self.versions else 0))

        async with job_service(target) as stub:
            self.final = await watch_until_done(stub, self.job_id, on_update, on_retry=on_retry)


async def test_shutdown_ends_watches_unavailable_and_they_resume_on_another_replica(
    tmp_path: Path,
) -> None:
    fakes = FakeProviders(places_per_query=6, every_domain_has_emails=True)
    with fakes, held_campaign_stack(tmp_path, fakes) as stack:
        doomed = stack.processes["jobs"]
        survivor = stack.start_jobs_replica()
        assert doomed.grpc_addr and survivor.grpc_addr
        # The client's channel knows both replicas; pick_first takes the doomed one (listed
        # first, and up), and its retry after UNAVAILABLE finds the survivor.
        both = f"ipv4:{doomed.grpc_addr},{survivor.grpc_addr}"
        config = jobs_pb2.CampaignConfig(
            business_type="bakery", location="Stopton", max_results=3,
            min_confidence_score=0, verify_emails=True,
        )  # fmt: skip
        async with job_service(doomed.grpc_addr) as stub:
            request = jobs_pb2.SubmitCampaignRequest(config=config)
            job_id = (await stub.SubmitCampaign(request, timeout=10)).job_id
            call = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id))
            watcher = ResumingWatcher(job_id)
            watch_task = asyncio.create_task(watcher.run(both))
            try:
                seen = await read_until(call, enriching)
                # Held: an email search is in flight and unanswered, so the job stays here.
                await until(lambda: fakes.hunter.held_count() >= 1, 60, "a held Hunter search")
                at_sigterm = seen[-1].job.version
                await until(
                    lambda: bool(watcher.versions) and watcher.versions[-1] >= at_sigterm,
                    60,
                    "the resuming watcher to catch up",
                )

                doomed.terminate()  # SIGTERM
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await read_to_end(call, seen)
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
                last = seen[-1].job.version
                assert ended.value.details() == SHUTDOWN.format(last)
                assert not any(is_terminal(u.job.status) for u in seen), versions(seen)
                assert strictly_increasing(versions(seen)), versions(seen)
                code = await asyncio.to_thread(doomed.stop, SHUTDOWN_GRACE_S + 10)
                assert code == 0, f"jobs exited {code}:\n{doomed.log_tail()}"

                # The resuming watcher got the same end, and went on from what it had seen.
                await until(lambda: bool(watcher.resumes), 30, "the watcher to resume")
                why, had = watcher.resumes[0]
                assert why == f"UNAVAILABLE: {SHUTDOWN.format(had)}", watcher.resumes

                fakes.hunter.release()
                async with job_service(survivor.grpc_addr) as other:
                    again = jobs_pb2.WatchJobRequest(job_id=job_id, after_version=last)
                    rest = await read_to_end(other.WatchJob(again))  # ends OK
                    assert rest, "the second replica sent nothing"
                    assert rest[0].job.version > last and strictly_increasing(versions(rest))
                    assert rest[-1].job.status == jobs_pb2.JOB_STATUS_COMPLETED, rest[-1].job
                    assert not any(is_terminal(u.job.status) for u in rest[:-1])
                    # A watch that already has the terminal snapshot ends OK at once.
                    had_it = jobs_pb2.WatchJobRequest(
                        job_id=job_id, after_version=rest[-1].job.version
                    )
                    assert await read_to_end(other.WatchJob(had_it)) == []

                await asyncio.wait_for(watch_task, STREAM_END_S)
                assert watcher.final is not None
                assert watcher.final.version == rest[-1].job.version
                assert watcher.final.status == jobs_pb2.JOB_STATUS_COMPLETED
                assert watcher.versions[-1] == watcher.final.version
                assert strictly_increasing(watcher.versions), watcher.versions
            finally:
                call.cancel()
                watch_task.cancel()
                await asyncio.gather(watch_task, return_exceptions=True)
