"""The workload of the chaos test (test_chaos.py): its settings (how many campaigns, how
long, the services' timeouts), the seeded plan (campaigns from several users, some
cancelled at a chosen moment; the faults) and the run (every campaign submitted, watched
and maybe cancelled while the faults happen, then every job read once all is quiet).
The harness it drives is chaos.py; the checks of what it leaves, chaos_checks.py."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass

import grpc

from prospect.v1 import jobs_pb2
from services.cli.client import is_terminal
from tests.e2e.chaos import Api, Chaos, ChaosStack, Fault, WatchLog, watch_job

CAMPAIGNS = 40
USERS = ("alice", "bob", "carol")
CANCELS = 7
SUBMIT_SPAN_S = 20.0  # submits spread over this long
CHAOS_SPAN_S = 26.0  # faults fall in this long
TERMINAL_WITHIN_S = 90.0  # after the last fault, every job must be terminal within this
ACK_WAIT_S = 2.0
STALL_TIMEOUT_S = 8.0
STOP_TIMEOUT_S = 5.0
SHUTDOWN_GRACE_S = 3.0


def service_env(jwt_secret: str) -> dict[str, str]:
    env = {
        "ACK_WAIT_S": str(ACK_WAIT_S),
        "STALL_TIMEOUT_S": str(STALL_TIMEOUT_S),
        "STOP_TIMEOUT_S": str(STOP_TIMEOUT_S),
        # Both jobs replicas apply reports, and partitions move at every kill of one.
        "REPORT_PARTITIONS": "4",
        "SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        "MAX_DELIVER": "10",
        "JOB_MAX_ATTEMPTS": "3",
        "PROVIDER_MAX_ATTEMPTS": "3",
        "OUTBOX_POLL_S": "0.5",
        "DISCOVERY_CONCURRENCY": "2",
        "ENRICHMENT_CONCURRENCY": "4",
        "MAX_ACTIVE_JOBS_PER_USER": "100",
        "MAX_WATCHES_PER_USER": "100",
        "AUTH_MODE": "jwt",
        "AUTH_JWT_SECRET": jwt_secret,
        "PAGE_TOKEN_SECRET": secrets.token_hex(32),
    }
    for name in ("GOOGLE_PLACES", "HUNTER", "NEVERBOUNCE"):
        env[f"RATE_LIMIT_{name}_RPS"], env[f"RATE_LIMIT_{name}_BURST"] = "50", "10"
    return env


# -- the plan -------------------------------------------------------------------------------


@dataclass
class Cancel:
    sent_at: float
    answered_at: float = 0.0
    outcome: str = ""  # "accepted", or the gRPC code it got
    tries: int = 0
    answer: jobs_pb2.Job | None = None


@dataclass(frozen=True)
class CancelPlan:
    """Cancel once the job is ``when`` ("submitted", "discovering", or "enriching" with at
    least ``leads`` leads done), ``delay_s`` later; or once it ended, whatever comes first."""

    when: str
    leads: int
    delay_s: float

    def due(self, job: jobs_pb2.Job | None) -> bool:
        if self.when == "submitted" or job is None:
            return self.when == "submitted"
        if is_terminal(job.status):
            return True
        if self.when == "discovering":
            return job.status == jobs_pb2.JOB_STATUS_PROCESSING
        return job.stage >= jobs_pb2.STAGE_ENRICHING and job.metrics.leads_enriched >= self.leads


@dataclass
class Campaign:
    n: int
    user: str
    config: jobs_pb2.CampaignConfig
    submit_at: float  # seconds after the start
    cancel_plan: CancelPlan | None
    job_id: str = ""
    cancel: Cancel | None = None

    @property
    def query(self) -> str:
        """The text query the Google adapter sends: the fakes bill the job under it."""
        return f"{self.config.business_type} in {self.config.location}"

    def __str__(self) -> str:
        budget = f" budget=${self.config.budget_limit:g}" if self.config.budget_limit else ""
        return f"#{self.n} {self.job_id or '(unsubmitted)'} {self.query!r} {self.user}{budget}"


def plan_campaigns(rng: random.Random, seed: int) -> list[Campaign]:
    """A third without a budget, a third with one that binds after a few leads, a third
    with a generous one; some cancelled a random moment after their submit."""
    cancelled = set(rng.sample(range(CAMPAIGNS), CANCELS))
    out = []
    for n in range(CAMPAIGNS):
        budget = (0.0, round(0.035 + rng.randint(1, 3) * 0.0325 + 0.005, 4), 2.0)[n % 3]
        config = jobs_pb2.CampaignConfig(
            business_type=rng.choice(("bakery", "coffee shop", "dentist", "plumber")),
            location=f"Chaosville {seed} {n}",
            max_results=rng.randint(3, 10),
            min_confidence_score=rng.choice((0, 0, 30)),
            budget_limit=budget,
            verify_emails=rng.random() < 0.8,
        )
        plan = None
        if n in cancelled:
            when = rng.choice(("submitted", "discovering", "enriching", "enriching"))
            plan = CancelPlan(when, rng.randint(1, 2), rng.uniform(0.0, 0.3))
        submit_at = rng.uniform(0.0, SUBMIT_SPAN_S)
        out.append(Campaign(n, USERS[n % len(USERS)], config, submit_at, plan))
    return out


def plan_faults(rng: random.Random, cs: ChaosStack) -> list[Fault]:
    """kill -9 each process once and a few at random, nats-server once, SIGTERM one worker,
    and every worker of one kind away for longer than the stall timeout."""
    jobs = cs.labels("jobs")
    workers = cs.labels("discovery") + cs.labels("enrichment")
    targets = jobs + workers + [rng.choice(jobs + workers) for _ in range(5)]
    # jobs replicas while submits and watches are busiest
    faults = [Fault(rng.uniform(2.0, SUBMIT_SPAN_S if t in jobs else CHAOS_SPAN_S), "kill", t,
                    rng.uniform(0.3, 2.0)) for t in targets]  # fmt: skip
    faults.append(Fault(rng.uniform(8.0, 22.0), "nats", "nats-server", rng.uniform(0.5, 2.0)))
    faults.append(Fault(rng.uniform(3.0, CHAOS_SPAN_S), "sigterm", rng.choice(workers), 1.0))
    kind = rng.choice(("discovery", "enrichment"))
    faults.append(Fault(rng.uniform(6.0, 16.0), "outage", kind, 1.5 * STALL_TIMEOUT_S))
    return sorted(faults, key=lambda f: f.at)


# -- the run --------------------------------------------------------------------------------


async def submit(api: Api, c: Campaign, seed: int) -> None:
    request = jobs_pb2.SubmitCampaignRequest(config=c.config, idempotency_key=f"chaos-{seed}-{c.n}")
    response = await api.call(c.user, "SubmitCampaign", request)
    c.job_id = response.job_id


async def cancel_when_due(api: Api, c: Campaign, log: WatchLog) -> None:
    plan = c.cancel_plan
    assert plan is not None
    while not (log.over or plan.due(log.latest)):
        log.changed.clear()
        await log.changed.wait()
    await asyncio.sleep(plan.delay_s)
    c.cancel = cancel = Cancel(sent_at=time.monotonic())
    try:
        request = jobs_pb2.CancelJobRequest(job_id=c.job_id)
        cancel.answer = await api.call(c.user, "CancelJob", request)
        cancel.outcome = "accepted"
    except grpc.aio.AioRpcError as err:
        cancel.outcome = err.code().name
    cancel.answered_at = time.monotonic()
    cancel.tries = api.tries()


async def drive(
    api: Api, chaos: Chaos, faults: list[Fault], campaigns: list[Campaign], seed: int
) -> dict[str, WatchLog]:
    """Submit, watch and cancel the campaigns while the faults happen; return when every
    watcher has seen its job terminal (or TERMINAL_WITHIN_S after the last fault)."""
    logs: dict[str, WatchLog] = {}
    tasks: list[asyncio.Task[None]] = []
    t0 = time.monotonic()

    async def campaign_life(c: Campaign) -> None:
        await asyncio.sleep(c.submit_at)
        await submit(api, c, seed)
        logs[c.job_id] = log = WatchLog(c.job_id, c.user)
        within = CHAOS_SPAN_S + TERMINAL_WITHIN_S + 60.0
        watcher = asyncio.create_task(watch_job(api, log, within))
        try:
            if c.cancel_plan is not None:
                await cancel_when_due(api, c, log)
            await watcher
        finally:
            watcher.cancel()

    try:
        tasks = [asyncio.create_task(campaign_life(c)) for c in campaigns]
        await chaos.run(faults, t0)
        await chaos.settle()
        chaos.note("last fault over; every process running")
        done, pending = await asyncio.wait(tasks, timeout=TERMINAL_WITHIN_S)
        for task in done:
            task.result()  # a harness error (a submit that kept failing...) surfaces here
        chaos.note(f"{len(pending)} job(s) not terminal {TERMINAL_WITHIN_S:.0f}s later")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await chaos.abort()
    return logs


@dataclass
class Final:
    """One campaign at the end: the API's job and leads, the watcher's record."""

    c: Campaign
    job: jobs_pb2.Job
    leads: list[jobs_pb2.Lead]
    log: WatchLog


async def run_campaigns(
    cs: ChaosStack, seed: int, tokens: dict[str, str]
) -> tuple[Chaos, list[Campaign], list[Final]]:
    """Plan, run the campaigns through the faults, and read every job once all is quiet."""
    rng = random.Random(seed)
    campaigns = plan_campaigns(rng, seed)
    faults = plan_faults(rng, cs)
    print("faults:\n" + "\n".join(f"  {fault}" for fault in faults), flush=True)
    chaos = Chaos(cs, SHUTDOWN_GRACE_S)
    async with Api(cs.replica_addrs, tokens) as api:
        logs = await drive(api, chaos, faults, campaigns, seed)
        # Late redeliveries land now: what is read afterwards is the final state.
        await asyncio.to_thread(cs.fakes.wait_quiet, 1.0, 30.0)
        await asyncio.sleep(2 * ACK_WAIT_S + 1.0)
        finals = [
            Final(c, await api.get_job(c.user, c.job_id), await api.leads(c.user, c.job_id),
                  logs[c.job_id])
            for c in campaigns if c.job_id
        ]  # fmt: skip
    return chaos, campaigns, finals
