"""Completion webhooks: from a job becoming final (its ``completed_at``, stamped in the
transaction that queues the delivery) to the signed POST arriving at a receiver on
loopback (``webhook_p99_ms``, target 500 ms).

Campaigns run ``concurrency`` at a time on zero-latency workers, each naming the
receiver (an aiohttp server in the bench process) as its ``notify_url``; the jobs service
must allow 127.0.0.1 (``WEBHOOK_ALLOWED_HOSTS``, :data:`STACK_ENV`). Each request's
signature is checked with the secret RotateWebhookSecret showed, so a figure is never
made of requests a receiver would refuse. Alone: ``python -m bench.webhooks`` starts its
own stack.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from aiohttp import web

from bench.stats import percentile, rounded
from prospect.v1 import jobs_pb2, jobs_pb2_grpc

STACK_ENV = {"WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
TARGET_P99_MS = 500.0


@dataclass
class WebhookResult:
    latencies_ms: list[float] = field(default_factory=list)
    bad_signatures: int = 0
    missing: int = 0  # jobs that ended and whose webhook did not arrive in time

    def figures(self) -> dict[str, float | int | None]:
        return {
            "webhook_p50_ms": rounded(percentile(self.latencies_ms, 50)),
            "webhook_p99_ms": rounded(percentile(self.latencies_ms, 99)),
            "webhooks_missing": self.missing,
        }


class _Receiver:
    """Records when each job's webhook arrived, checking its signature."""

    def __init__(self, secret: str, result: WebhookResult) -> None:
        self._key = base64.b64decode(secret.removeprefix("whsec_"))
        self._result = result
        self.arrived: dict[str, tuple[float, float]] = {}  # job -> (arrival, completed_at)
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time()
        body = await request.read()
        stamp, msg_id = request.headers["webhook-timestamp"], request.headers["webhook-id"]
        mac = hmac.new(self._key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
        expected = "v1," + base64.b64encode(mac.digest()).decode()
        if not hmac.compare_digest(expected, request.headers["webhook-signature"]):
            self._result.bad_signatures += 1
            return web.Response(status=400)
        job = json.loads(body)["data"]
        completed = datetime.fromisoformat(job["completedAt"].replace("Z", "+00:00"))
        self.arrived.setdefault(job["id"], (now, completed.timestamp()))
        self.changed.set()
        return web.Response(status=204)


async def run_webhooks(
    channel: grpc.aio.Channel, campaigns: int = 200, concurrency: int = 16
) -> WebhookResult:
    """``campaigns`` campaigns with a notify_url, ``concurrency`` at a time; the latency of
    each one's webhook after its job ended."""
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    result = WebhookResult()
    secret = (await stub.RotateWebhookSecret(jobs_pb2.RotateWebhookSecretRequest())).secret
    receiver = _Receiver(secret, result)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with gate:
            config = jobs_pb2.CampaignConfig(
                business_type="bakery", location=f"Webhook {n}, ME", max_results=2,
                min_confidence_score=0, verify_emails=False,
                notify_url=f"http://127.0.0.1:{port}/hook",
            )  # fmt: skip
            submitted = await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config))
            deadline = time.monotonic() + 60
            while submitted.job_id not in receiver.arrived and time.monotonic() < deadline:
                receiver.changed.clear()
                with_timeout = asyncio.wait_for(receiver.changed.wait(), 1.0)
                try:
                    await with_timeout
                except TimeoutError:
                    pass
            if submitted.job_id not in receiver.arrived:
                result.missing += 1

    try:
        await asyncio.gather(*(one(n) for n in range(campaigns)))
    finally:
        await runner.cleanup()
    result.latencies_ms = [
        (arrival - completed) * 1000 for arrival, completed in receiver.arrived.values()
    ]
    return result


async def _alone(campaigns: int) -> WebhookResult:
    from bench.config import FAST_WORKER_ENV
    from bench.config import STACK_ENV as BENCH_ENV
    from services.cli.stack import Stack

    stack = Stack(env={**BENCH_ENV, **FAST_WORKER_ENV, **STACK_ENV})
    await asyncio.to_thread(stack.start)
    try:
        async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
            return await run_webhooks(channel, campaigns)
    finally:
        await asyncio.to_thread(stack.stop)


def main() -> None:
    campaigns = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    result = asyncio.run(_alone(campaigns))
    figures = result.figures()
    print(
        f"webhooks: {len(result.latencies_ms)} delivered, p50 {figures['webhook_p50_ms']} ms, "
        f"p99 {figures['webhook_p99_ms']} ms (target {TARGET_P99_MS:g}), "
        f"{result.missing} missing, {result.bad_signatures} bad signatures",
        file=sys.stderr,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
