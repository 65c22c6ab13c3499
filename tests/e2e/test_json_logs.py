"""End to end, structured logs (LOG_FORMAT=json): every line every service writes is one
JSON object; a campaign's lines in the jobs service and both workers carry its job id; a
campaign failed by a bad provider key leaves one WARNING in the jobs service's log naming
the job, the provider and the cause, and never the key (issue 16)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prospect.v1 import jobs_pb2
from services.cli.client import job_service
from services.cli.stack import Stack
from tests.e2e.on_fakes import campaign, running_stack, submit, wait_all_terminal
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

JSON_LOGS = {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
WRONG_KEY = "hk-wrong-key-json-logs-0000"
KEYS = {"time", "level", "service", "logger", "message"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeProviders]:
    with FakeProviders(places_per_query=8) as running:
        yield running


def service_lines(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every line of every service's log (nats-server's aside), parsed: each must be one
    JSON object with the keys every line has."""
    parsed: dict[str, list[dict[str, Any]]] = {}
    for label, text in stack.logs().items():
        if label == stack.nats.label:
            continue
        parsed[label] = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{label} logged a line that is not JSON: {line!r}")
            assert isinstance(record, dict) and KEYS <= set(record), (label, line)
            parsed[label].append(record)
    return parsed


async def run_campaign(stack: Stack, location: str) -> jobs_pb2.Job:
    async with job_service(stack.jobs_addr) as stub:
        job_id = await submit(stub, campaign(location, max_results=4))
        return (await wait_all_terminal(stub, [job_id], within=60))[job_id]


async def test_every_line_is_json_and_a_campaigns_lines_carry_its_job_id(
    fakes: FakeProviders, tmp_path: Path
) -> None:
    with running_stack(tmp_path, fakes, JSON_LOGS) as stack:
        job = await run_campaign(stack, "Ogdenville")
        logs = service_lines(stack)
        raw = "\n".join(stack.logs().values())
    assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job
    assert {"jobs", "discovery", "enrichment", "web"} <= set(logs)
    ready = [r for r in logs["jobs"] if "ready on" in r["message"]]
    assert ready and ready[0]["service"] == "jobs" and ready[0]["level"] == "INFO"
    for label in ("jobs", "discovery", "enrichment"):
        about = [r for r in logs[label] if r.get("job_id") == job.id]
        assert about, f"no line of {label} carries {job.id}"
        assert all(r["service"] == label for r in about)
    # A line that names the job in its words carries its id as a field too.
    for label, records in logs.items():
        for record in records:
            if job.id in record["message"]:
                assert record.get("job_id") == job.id, (label, record)
    ended = [r for r in logs["jobs"] if r.get("job_id") == job.id and "COMPLETED" in r["message"]]
    assert len(ended) == 1, ended
    for key in (fakes.google.api_key, fakes.hunter.api_key, fakes.neverbounce.api_key):
        assert key not in raw


async def test_a_bad_key_fails_the_job_with_one_warning_naming_job_provider_and_cause(
    fakes: FakeProviders, tmp_path: Path
) -> None:
    env = {**JSON_LOGS, "HUNTER_API_KEY": WRONG_KEY}
    with running_stack(tmp_path, fakes, env) as stack:
        job = await run_campaign(stack, "Brockway")
        logs = service_lines(stack)
        raw = "\n".join(stack.logs().values())
    assert job.status == jobs_pb2.JOB_STATUS_FAILED, job
    assert WRONG_KEY not in raw
    alarms = [
        r
        for r in logs["jobs"]
        if r.get("job_id") == job.id and r["level"] in ("WARNING", "ERROR", "CRITICAL")
    ]
    assert len(alarms) == 1, alarms
    (alarm,) = alarms
    assert alarm["level"] == "WARNING" and alarm["provider"] == "hunter", alarm
    assert job.id in alarm["message"] and "FAILED" in alarm["message"]
    assert "hunter" in alarm["message"] and "401" in alarm["message"], alarm
    # The worker that met the refusal says so once per task, naming job and provider.
    refused = [
        r
        for r in logs["enrichment"]
        if r["level"] == "WARNING" and r.get("job_id") == job.id and r.get("provider") == "hunter"
    ]
    assert refused and all("401" in r["message"] for r in refused), logs["enrichment"]
    assert all(r["error"] == "PermanentProviderError" for r in refused)
