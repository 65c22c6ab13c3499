"""The webhook sender is woken by a committed change that queued a delivery, and by no
other: a job ending without a webhook costs no claim on the jobs service's writer."""

from __future__ import annotations

from sqlalchemy import func, select

from services.cli.stack import NatsServer
from services.jobs.machine import Status
from services.jobs.models import WebhookDeliveryRow
from tests.integration.harness import Harness, config, discovered, jobs_service


async def _deliveries(harness: Harness) -> int:
    async with harness.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(WebhookDeliveryRow)) or 0)


async def test_only_a_job_ending_with_a_webhook_wakes_the_sender(
    database_url: str, nats_server: NatsServer
) -> None:
    async with jobs_service(database_url, nats_server) as harness:
        quiet = await harness.commands.submit("alice", config(max_results=2), "")
        await harness.apply(discovered(quiet.id, 0))
        assert Status((await harness.job(quiet.id)).status).terminal
        assert await _deliveries(harness) == 0
        assert not harness.webhooks.woken

        hooked_config = config(max_results=2, notify_url="https://hooks.example/done")
        hooked = await harness.commands.submit("alice", hooked_config, "")
        assert not harness.webhooks.woken  # a submit queues no delivery
        await harness.apply(discovered(hooked.id, 0, "hooked.result"))
        assert Status((await harness.job(hooked.id)).status).terminal
        assert await _deliveries(harness) == 1
        assert harness.webhooks.woken
