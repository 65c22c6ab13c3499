"""The workers' Prometheus metrics (see :mod:`services.common.metrics` for the conventions).

Recorded where each thing happens: tasks in :mod:`services.common.worker` and the workers'
``run``; provider requests, their latency and rate-limit answers in the one retry loop of
the HTTP adapters (:func:`services.common.providers.http.send`) and in the sandbox; spend
when a report carrying money has been published (:func:`record_spend`), at the same
micro-dollar amounts the jobs service books from that report; the enrichment cache and
budget skips in the enrichment worker.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from prospect.v1 import work_pb2
from services.common.money import MICROS_PER_USD, usd_to_micros

# Bounded label values.
TASK_OUTCOMES = ("done", "retried", "failed", "cancelled")
# ok; auth_error: the key was refused; credits_exhausted: the account's credits or daily
# quota are used up; rate_limited: "too many requests"; client_error: any other refusal
# (4xx); server_error: 5xx, or no answer at all (connection refused or reset);
# timeout; malformed: an answer that could not be read.
PROVIDER_OUTCOMES = (
    "ok", "auth_error", "credits_exhausted", "rate_limited", "client_error", "server_error",
    "timeout", "malformed",
)  # fmt: skip

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

TASKS = Counter(
    "prospect_tasks",
    "Task deliveries ended, by kind (discovery, enrichment) and outcome: done, retried "
    "(handed back to the queue), failed (reported as failed), cancelled (the job was stopped).",
    ["kind", "outcome"],
)
TASK_DURATION = Histogram(
    "prospect_task_duration_seconds",
    "Time one task delivery took, from its message to its fate.",
    ["kind"],
    buckets=_TASK_BUCKETS,
)
PROVIDER_REQUESTS = Counter(
    "prospect_provider_requests",
    "Requests sent to providers (each attempt of a retried call is one), by provider, "
    "operation and outcome.",
    ["provider", "operation", "outcome"],
)
PROVIDER_REQUEST_DURATION = Histogram(
    "prospect_provider_request_duration_seconds",
    "Time from sending a provider request to its answer (or failure).",
    ["provider", "operation"],
    buckets=_LATENCY_BUCKETS,
)
PROVIDER_SPEND = Counter(
    "prospect_provider_spend_usd",
    "Money spent at providers, in USD, as booked on the jobs' books (reported by workers).",
    ["provider"],
)
RATELIMIT_WAIT = Histogram(
    "prospect_ratelimit_wait_seconds",
    "Time a request waited for its slot under the provider's shared rate limit.",
    ["provider"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
RATELIMIT_ANSWERS = Counter(
    "prospect_ratelimit_answers",
    "Rate-limit answers (HTTP 429 and the like) received from providers.",
    ["provider"],
)
CACHE_LOOKUPS = Counter(
    "prospect_cache_lookups",
    "Enrichment cache lookups (email searches and verifications), by result: hit or miss.",
    ["result"],
)
LEADS_SKIPPED_BUDGET = Counter(
    "prospect_leads_skipped_budget",
    "Leads whose email search was not made because the budget ran out.",
)


def task_ended(kind: str, outcome: str) -> None:
    """One delivery of a ``kind`` task ended with ``outcome`` (one of TASK_OUTCOMES)."""
    TASKS.labels(kind, outcome).inc()


def provider_request(provider: str, operation: str, outcome: str, seconds: float) -> None:
    """One request to ``provider`` answered (or failed) with ``outcome`` after ``seconds``."""
    PROVIDER_REQUESTS.labels(provider, operation, outcome).inc()
    PROVIDER_REQUEST_DURATION.labels(provider, operation).observe(seconds)
    if outcome == "rate_limited":
        RATELIMIT_ANSWERS.labels(provider).inc()


def cache_lookup(hit: bool) -> None:
    CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()


def record_spend(report: work_pb2.WorkerReport) -> None:
    """Count the money a published ``report`` puts on the books: its charges, and what
    its settled intents bill (an intent reported before it was settled counts once
    settled; one never settled, its worker killed mid-request, is on the books at list
    price and not here). The same micro-dollar amounts the jobs service books."""
    for charge in report.charges:
        _spend(charge.provider, usd_to_micros(charge.cost_usd))
    for intent in report.intents:
        if intent.settled:
            _spend(intent.charge.provider, usd_to_micros(intent.billed_usd))


def _spend(provider: str, micros: int) -> None:
    if micros > 0:
        PROVIDER_SPEND.labels(provider).inc(micros / MICROS_PER_USD)
