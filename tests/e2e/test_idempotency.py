"""SubmitCampaign idempotency keys over gRPC, on a real stack with two jobs replicas.

A key repeated with the same config answers the job it first made (retries are safe, on
any replica, and submits arriving together share one job); a key repeated with another
config is ALREADY_EXISTS naming the key, never the first job passed off as the new
campaign. Keys are per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import job_service
from services.cli.stack import Stack
from tests.e2e import tokens as t

pytestmark = pytest.mark.e2e

SECRET = secrets.token_urlsafe(32)
ENV = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET, "SANDBOX_LATENCY_MS": "5"}
ENV["PAGE_TOKEN_SECRET"] = secrets.token_hex(32)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Addresses of two jobs replicas of one stack (JWT auth), stopped after the module."""
    stack = Stack(tmp_path_factory.mktemp("idempotency"), env=ENV)
    try:
        stack.start()
        second = stack.start_jobs_replica()
        assert second.grpc_addr
        yield stack.jobs_addr, second.grpc_addr
    except BaseException:
        print(f"\n===== logs of the stack =====\n{stack.log_tails(80)}")
        raise
    finally:
        stack.stop()


def config(budget: float = 5.0, location: str = "Keyport, ME") -> jobs_pb2.CampaignConfig:
    return jobs_pb2.CampaignConfig(
        business_type="bakery", location=location, max_results=2,
        min_confidence_score=0, budget_limit=budget, verify_emails=True,
    )  # fmt: skip


class Client:
    """One user's stubs on both replicas."""

    def __init__(
        self, first: jobs_pb2_grpc.JobServiceStub, second: jobs_pb2_grpc.JobServiceStub
    ) -> None:
        self.first, self.second = first, second

    async def submit(
        self, cfg: jobs_pb2.CampaignConfig, key: str, *, on_second: bool = False
    ) -> jobs_pb2.SubmitCampaignResponse:
        stub = self.second if on_second else self.first
        request = jobs_pb2.SubmitCampaignRequest(config=cfg, idempotency_key=key)
        return await stub.SubmitCampaign(request, timeout=10)

    async def refused(
        self, cfg: jobs_pb2.CampaignConfig, key: str, *, on_second: bool = False
    ) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await self.submit(cfg, key, on_second=on_second)
        return refused.value


@pytest.fixture
async def alice(replicas: tuple[str, str]) -> AsyncIterator[Client]:
    async with client_of("alice", replicas) as client:
        yield client


@pytest.fixture
async def bob(replicas: tuple[str, str]) -> AsyncIterator[Client]:
    async with client_of("bob", replicas) as client:
        yield client


@contextlib.asynccontextmanager
async def client_of(user: str, replicas: tuple[str, str]) -> AsyncIterator[Client]:
    token = t.hs256(SECRET, t.claims(user))
    async with (
        job_service(replicas[0], token=token) as first,
        job_service(replicas[1], token=token) as second,
    ):
        yield Client(first, second)


def new_key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def test_the_same_key_and_config_answer_the_same_job_on_any_replica(
    alice: Client,
) -> None:
    key = new_key()
    first = await alice.submit(config(), key)
    again = await alice.submit(config(), key)
    elsewhere = await alice.submit(config(), key, on_second=True)
    assert first.job_id.startswith("job_")
    assert (again.job_id, again.campaign_id) == (first.job_id, first.campaign_id)
    assert (elsewhere.job_id, elsewhere.campaign_id) == (first.job_id, first.campaign_id)


async def test_the_same_key_with_another_config_is_already_exists(alice: Client) -> None:
    key = new_key()
    first = await alice.submit(config(budget=5.0), key)
    for on_second in (False, True):
        err = await alice.refused(config(budget=6.0), key, on_second=on_second)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
        assert err.details() == (
            f"idempotency_key {key!r} was used for job {first.job_id} with a different "
            "config; use a new key"
        )
    err = await alice.refused(config(location="Elsewhere, ME"), key)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    # The refusals changed nothing: the key still answers its own job to its own config.
    assert (await alice.submit(config(budget=5.0), key)).job_id == first.job_id


async def test_submits_arriving_together_with_one_key_make_one_job(alice: Client) -> None:
    """Whichever config is written first owns the key; the same config again gets its job,
    the other config ALREADY_EXISTS, whether or not they share a transaction."""
    key = new_key()
    configs = [config(budget=5.0 if n % 2 else 7.0) for n in range(8)]
    outcomes = await asyncio.gather(
        *(alice.submit(cfg, key, on_second=n % 4 == 0) for n, cfg in enumerate(configs)),
        return_exceptions=True,
    )
    accepted = {o.job_id for o in outcomes if isinstance(o, jobs_pb2.SubmitCampaignResponse)}
    assert len(accepted) == 1, outcomes
    (job_id,) = accepted
    job = await alice.first.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)
    for cfg, outcome in zip(configs, outcomes, strict=True):
        if cfg.budget_limit == job.config.budget_limit:
            assert isinstance(outcome, jobs_pb2.SubmitCampaignResponse), outcome
        else:
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome
            assert outcome.code() == grpc.StatusCode.ALREADY_EXISTS, outcome
            assert repr(key) in (outcome.details() or ""), outcome


async def test_keys_are_per_user(alice: Client, bob: Client) -> None:
    key = new_key()
    alices = await alice.submit(config(budget=5.0), key)
    bobs = await bob.submit(config(budget=9.0), key)  # another user: another config is fine
    assert alices.job_id != bobs.job_id
    assert (await bob.submit(config(budget=9.0), key, on_second=True)).job_id == bobs.job_id
    assert (await alice.submit(config(budget=5.0), key, on_second=True)).job_id == alices.job_id
    assert (await bob.refused(config(budget=5.0), key)).code() == grpc.StatusCode.ALREADY_EXISTS
