"""Prometheus metrics: the names the alert rules and dashboards use, labels that never hold
a job or user id and only take values from small fixed sets, METRICS_ADDR, and the
``/metrics`` server (its counters on a real stack: tests/e2e/test_metrics.py)."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from services.common import metrics as common_metrics
from services.common import worker_metrics
from services.common.errors import ConfigError
from services.common.metrics import MetricsServer
from services.common.providers import google_places, hunter, neverbounce
from services.common.providers.http import Outcome, metrics_kind
from services.common.settings import Settings
from services.jobs import metrics as jobs_metrics
from services.web import metrics as web_metrics
from services.web.app import build_app
from tests.fakes import FakeGooglePlaces, FakeHunter, FakeNeverBounce, FakeWorld, RequestRecord
from tests.fakes.google_places import SEARCH_PATH

README = Path(__file__).resolve().parents[2] / "README.md"
MODULES = (common_metrics, worker_metrics, jobs_metrics, web_metrics)

# The names (as exposed: counters with _total) and labels that alert rules and dashboards
# are written against: changing one is a breaking change for them.
EXPECTED = {
    "prospect_build_info": ("service", "version"),
    "prospect_consumer_pending_messages": ("consumer",),
    "prospect_consumer_ack_pending_messages": ("consumer",),
    "prospect_rpc_handled_total": ("method", "code"),
    "prospect_rpc_duration_seconds": ("method",),
    "prospect_jobs_submitted_total": (),
    "prospect_jobs_finished_total": ("status",),
    "prospect_jobs": ("status",),
    "prospect_jobs_stuck": (),
    "prospect_jobs_stalled_total": (),
    "prospect_watch_streams": (),
    "prospect_update_delivery_seconds": (),
    "prospect_report_batch_size": (),
    "prospect_report_apply_seconds": (),
    "prospect_outbox_rows": (),
    "prospect_reports_refused_total": ("reason",),
    "prospect_webhook_deliveries_total": ("outcome",),
    "prospect_tasks_total": ("kind", "outcome"),
    "prospect_task_duration_seconds": ("kind",),
    "prospect_provider_requests_total": ("provider", "operation", "outcome"),
    "prospect_provider_request_duration_seconds": ("provider", "operation"),
    "prospect_provider_spend_usd_total": ("provider",),
    "prospect_ratelimit_wait_seconds": ("provider",),
    "prospect_ratelimit_answers_total": ("provider",),
    "prospect_cache_lookups_total": ("result",),
    "prospect_leads_skipped_budget_total": (),
    "prospect_http_requests_total": ("route", "code"),
    "prospect_sse_streams": (),
}
# Label names whose values are per job, lead or user: unbounded, and personal.
FORBIDDEN = {"job_id", "job", "lead_id", "lead", "user_id", "user", "task_id", "campaign_id"}


def defined() -> dict[str, tuple[str, ...]]:
    """Every metric the services define: exposed name -> label names."""
    found = {}
    for module in MODULES:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                name = value._name + ("_total" if value._type == "counter" else "")
                found[name] = tuple(value._labelnames)
    return found


def test_the_metrics_are_the_documented_ones() -> None:
    assert defined() == EXPECTED
    section = README.read_text().split("### Metrics", 1)[1]
    section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
    for name in EXPECTED:
        assert f"`{name}`" in section, f"{name} is not in the README's Metrics table"


def test_no_label_is_per_job_or_per_user() -> None:
    for name, labels in defined().items():
        assert name.startswith("prospect_")
        assert not FORBIDDEN & set(labels), name


def _kind(classify: Callable[[httpx.Response], Outcome[Any]], response: httpx.Response) -> str:
    """What ``send`` counts ``response`` as (an unreadable body is ``malformed``)."""
    try:
        return metrics_kind(classify(response))
    except (ValueError, KeyError, TypeError):
        return "malformed"


@pytest.mark.parametrize(
    ("fake", "classify"),
    [
        (FakeGooglePlaces, google_places._classify_search),
        (FakeHunter, hunter._classify),
        (FakeNeverBounce, neverbounce._classify),
    ],
)
@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ("bad_key", "auth_error"),
        ("credits_exhausted", "credits_exhausted"),
        ("rate_limit", "rate_limited"),
        ("server_error", "server_error"),
        ("malformed", "malformed"),
    ],
)
def test_provider_answers_count_as_their_outcome(
    fake: type[FakeGooglePlaces | FakeHunter | FakeNeverBounce],
    classify: Callable[[httpx.Response], Outcome[Any]],
    fault: str,
    outcome: str,
) -> None:
    """Each provider's own wire answer for a fault (the fakes') is counted as what it is:
    a refused key is the alertable ``auth_error``."""
    server = fake(FakeWorld(places_per_query=3))
    req = RequestRecord(0.0, "POST", SEARCH_PATH, {}, {}, b"")
    reply = server.fault_reply(fault, req)
    response = httpx.Response(reply.status, content=reply.body, headers=reply.headers)
    assert _kind(classify, response) == outcome


STATUSES = [*range(200, 209), *range(300, 310), *range(400, 452), 500, 502, 503, 504]


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize(
    "classify", [google_places._classify_search, hunter._classify, neverbounce._classify]
)
def test_provider_outcomes_are_bounded(
    status: int, classify: Callable[[httpx.Response], Outcome[Any]]
) -> None:
    for body in (b"", b"{}", b'{"error": {"status": "X"}}', b'{"status": "weird"}'):
        response = httpx.Response(status, content=body)
        assert _kind(classify, response) in worker_metrics.PROVIDER_OUTCOMES


def test_other_label_values_are_bounded() -> None:
    assert {s.value.lower() for s in jobs_metrics.FINISHED} == {"completed", "failed", "cancelled"}
    jobs_metrics.report_refused("some reason nobody listed")
    [family] = jobs_metrics.REPORTS_REFUSED.collect()
    refused = family.samples
    assert {s.labels["reason"] for s in refused} <= set(jobs_metrics.REFUSALS)
    codes = {code.name for code in grpc.StatusCode}
    assert "NOT_FOUND" in codes and "OK" in codes


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/jobs/job_0123456789abcdef", "/v1/jobs/{job_id}"),
        ("/v1/jobs/job_0123456789abcdef:cancel", "/v1/jobs/{job_id}:cancel"),
        ("/v1/jobs/job_0123456789abcdef/events", "/v1/jobs/{job_id}/events"),
        ("/healthz", "/healthz"),
        ("/no/such/page/user_42", web_metrics.UNMATCHED),
    ],
)
async def test_http_requests_are_counted_by_route_template(path: str, route: str) -> None:
    app = build_app(None, None, frozenset(), 1024)  # type: ignore[arg-type]
    method = "POST" if path.endswith(":cancel") else "GET"
    request = make_mocked_request(method, path, app=app)
    request._match_info = await app.router.resolve(request)  # as the server does
    assert web_metrics.route_of(request) == route


def test_metrics_addr_is_validated() -> None:
    assert Settings.from_env({}).metrics_addr == ""
    assert Settings.from_env({"METRICS_ADDR": "0.0.0.0:9464"}).metrics_addr == "0.0.0.0:9464"
    for bad in ("9464", "host:", ":9464", "host:port", "host:99999"):
        with pytest.raises(ConfigError, match="METRICS_ADDR"):
            Settings.from_env({"METRICS_ADDR": bad})


def test_the_server_serves_parses_and_stops() -> None:
    server = MetricsServer("127.0.0.1:0", "unit")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert "prospect_build_info" in names
        assert re.search(r'prospect_build_info\{service="unit",version="[^"]+"\} 1\.0', text)
        # A port in use is a configuration error naming the setting.
        taken = MetricsServer(f"127.0.0.1:{server.port}", "unit")
        with pytest.raises(ConfigError, match=re.escape(f"METRICS_ADDR=127.0.0.1:{server.port}")):
            taken.start()
    finally:
        server.stop()
    with socket.socket() as sock:  # the port is free again: the server closed its socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (the scrape's TIME_WAIT)
        sock.bind(("127.0.0.1", server.port))
        sock.listen()


def test_an_empty_addr_serves_nothing() -> None:
    server = MetricsServer("", "unit")
    server.start()
    assert server.port == 0
    server.stop()
