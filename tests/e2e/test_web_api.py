"""End to end, the web process (``python -m services.web``) in real stacks: the HTTP/JSON
API over the jobs API (submit, get, list, cancel, leads as JSON and as the CLI's CSV), job
progress as Server-Sent Events resumed with Last-Event-ID, the error shape and its HTTP
statuses, CORS by allowlist, security headers, tenant isolation on every route with
AUTH_MODE=jwt, and the refusals (token in a URL, AUTH_MODE=none off loopback)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.stack import REPO_ROOT, Stack, free_port
from services.web.app import STATIC_DIR
from services.web.security import SECURITY_HEADERS
from tests.e2e.cli import ok, run_cli
from tests.e2e.secured_stack import AUTH_ENV, token

pytestmark = pytest.mark.e2e

ALLOWED = "https://app.example.test"
UNKNOWN_JOB = "job_" + "ab" * 16
TERMINAL = {"JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"}
TIMEOUT = httpx.Timeout(60.0)
CAMPAIGN = {
    "businessType": "bakery",
    "location": "Portland, OR",
    "maxResults": 4,
    "minConfidenceScore": 0,
    "verifyEmails": True,
}


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SANDBOX_LATENCY_MS": "20", "WEB_ALLOWED_ORIGINS": f"{ALLOWED}, http://other.test"}
    running = Stack(tmp_path_factory.mktemp("web"), env=env)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def http(web_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web_stack.web_url, timeout=TIMEOUT) as client:
        yield client


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    answer = client.post("/v1/campaigns", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    assert answer.headers["Location"] == f"/v1/jobs/{job['id']}"
    return job


def events(
    client: httpx.Client, job_id: str, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """(id, data) of every ``update`` event of the job's stream, read to its end."""
    out: list[tuple[int, dict[str, Any]]] = []
    current: dict[str, str] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        assert stream.status_code == 200, stream.read()
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.headers["Cache-Control"] == "no-cache"
        for line in stream.iter_lines():
            if line == "":
                if current:
                    assert current.get("event") == "update", current
                    out.append((int(current["id"]), json.loads(current["data"])))
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return out


def error_of(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The ``error`` object of an answer that must be this error."""
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture(scope="module")
def finished(http: httpx.Client) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    """A job submitted over HTTP and followed to its end over SSE: (job, its events)."""
    job = submit(http, {**CAMPAIGN, "idempotencyKey": "web-finished"})
    return job, events(http, job["id"])


def test_submit_answers_202_with_the_job_and_is_idempotent(
    http: httpx.Client, finished: tuple[dict[str, Any], list[Any]]
) -> None:
    job, _ = finished
    assert job["id"].startswith("job_") and job["status"].startswith("JOB_STATUS_")
    assert job["config"]["businessType"] == "bakery" and job["config"]["maxResults"] == 4
    # The request's own shape (proto field names too) with the same key: the same job.
    again = submit(http, {"config": CAMPAIGN, "idempotency_key": "web-finished"})
    assert again["id"] == job["id"]


def test_events_follow_the_job_to_its_end_and_resume_after_last_event_id(
    http: httpx.Client, finished: tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]
) -> None:
    job, seen = finished
    ids = [event_id for event_id, _ in seen]
    assert len(ids) >= 2 and ids == sorted(set(ids)), ids
    for event_id, data in seen:
        assert data["job"]["id"] == job["id"] and int(data["job"]["version"]) == event_id
    assert seen[-1][1]["job"]["status"] == "JOB_STATUS_COMPLETED"
    assert not any(data["job"]["status"] in TERMINAL for _, data in seen[:-1])

    middle = ids[len(ids) // 2 - 1] if len(ids) > 2 else ids[0]
    resumed = events(http, job["id"], {"Last-Event-ID": str(middle)})
    # Only later versions: WatchJob sends the current snapshot (the terminal one, for a
    # job that has finished since) and then each change, not the versions in between.
    resumed_ids = [i for i, _ in resumed]
    assert resumed_ids and min(resumed_ids) > middle and resumed_ids == sorted(resumed_ids)
    assert resumed[-1][1]["job"] == seen[-1][1]["job"]
    assert events(http, job["id"], {"Last-Event-ID": "0"})[-1][1]["job"] == seen[-1][1]["job"]
    by_query = http.get(f"/v1/jobs/{job['id']}/events", params={"afterVersion": str(middle)})
    assert f"id: {ids[-1]}" in by_query.text and f"id: {middle}\n" not in by_query.text
    # Resuming after the terminal version: nothing more, and the stream ends.
    assert events(http, job["id"], {"Last-Event-ID": str(ids[-1])}) == []


def test_get_and_list_answer_the_job(
    http: httpx.Client, finished: tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]
) -> None:
    job, seen = finished
    got = http.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json() == seen[-1][1]["job"]
    listed = http.get("/v1/jobs", params={"pageSize": "50", "status": "COMPLETED"})
    assert listed.status_code == 200, listed.text
    assert job["id"] in {j["id"] for j in listed.json()["jobs"]}
    assert all(j["status"] == "JOB_STATUS_COMPLETED" for j in listed.json()["jobs"])
    pending = http.get("/v1/jobs", params={"status": "JOB_STATUS_PENDING"}).json()["jobs"]
    assert job["id"] not in {j["id"] for j in pending}


def test_leads_as_json_and_as_the_same_csv_as_the_cli(
    web_stack: Stack,
    http: httpx.Client,
    finished: tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]],
) -> None:
    job_id = finished[0]["id"]
    final = finished[1][-1][1]["job"]
    leads = http.get(f"/v1/jobs/{job_id}/leads")
    assert leads.status_code == 200, leads.text
    rows = leads.json()["leads"]
    assert len(rows) == final["metrics"]["qualifiedLeads"] > 0
    assert all(lead["campaignId"] == final["campaignId"] for lead in rows)

    answer = http.get(f"/v1/jobs/{job_id}/leads", params={"format": "csv"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{job_id}.csv"'
    cli = ok(run_cli(web_stack.jobs_addr, "leads", job_id, "--format", "csv"))
    # The CLI prints exactly that document (read here in text mode: CRLF comes as LF).
    assert answer.text.replace("\r\n", "\n") == cli
    assert answer.content.count(b"\r\n") == len(rows) + 1  # RFC 4180 line ends
    records = list(csv.DictReader(io.StringIO(answer.text, newline="")))
    assert records == list(csv.DictReader(io.StringIO(cli)))
    assert [r["lead_id"] for r in records] == [lead["id"] for lead in rows]
    # The waterfall step that found each email, in the last column.
    assert list(records[0])[-1] == "email_source"
    assert [r["email_source"] for r in records] == [lead.get("emailSource", "") for lead in rows]


def test_cancel_over_http(http: httpx.Client) -> None:
    job = submit(http, {**CAMPAIGN, "maxResults": 20, "location": "Cancel Town"})
    cancelled = http.post(f"/v1/jobs/{job['id']}:cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] in ("JOB_STATUS_CANCELLING", "JOB_STATUS_CANCELLED")
    assert events(http, job["id"])[-1][1]["job"]["status"] == "JOB_STATUS_CANCELLED"
    # Cancelling a finished job: FAILED_PRECONDITION, which google.rpc.Code maps to 400.
    again = http.post(f"/v1/jobs/{job['id']}:cancel")
    error_of(again, 400, "FAILED_PRECONDITION")
    # The cancel route takes POST only.
    error_of(http.get(f"/v1/jobs/{job['id']}:cancel"), 405, "UNIMPLEMENTED")


def test_errors_have_one_shape_and_the_status_of_their_code(http: httpx.Client) -> None:
    bad = http.post("/v1/campaigns", json={**CAMPAIGN, "maxResults": 0})
    error = error_of(bad, 400, "INVALID_ARGUMENT")
    types = {detail["@type"].rpartition("/")[2]: detail for detail in error["details"]}
    assert "google.rpc.ErrorInfo" in types and "google.rpc.BadRequest" in types, error
    fields = [v["field"] for v in types["google.rpc.BadRequest"]["fieldViolations"]]
    assert any("max_results" in field for field in fields), error

    missing = error_of(http.get(f"/v1/jobs/{UNKNOWN_JOB}"), 404, "NOT_FOUND")
    assert missing["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    error_of(http.get(f"/v1/jobs/{UNKNOWN_JOB}/events"), 404, "NOT_FOUND")
    error_of(http.get(f"/v1/jobs/{UNKNOWN_JOB}/leads"), 404, "NOT_FOUND")

    malformed = http.post(
        "/v1/campaigns", content=b'{"businessType": ', headers={"Content-Type": "application/json"}
    )
    error_of(malformed, 400, "INVALID_ARGUMENT")
    error_of(http.post("/v1/campaigns", json=[1, 2]), 400, "INVALID_ARGUMENT")
    error_of(http.post("/v1/campaigns", json={"noSuchField": 1}), 400, "INVALID_ARGUMENT")
    huge = {**CAMPAIGN, "location": "x" * (70 * 1024)}
    error_of(http.post("/v1/campaigns", json=huge), 413, "RESOURCE_EXHAUSTED")
    error_of(http.get("/v1/jobs", params={"status": "SLEEPING"}), 400, "INVALID_ARGUMENT")
    error_of(http.get("/v1/nothing-here"), 404, "NOT_FOUND")
    error_of(http.get("/v1/campaigns"), 405, "UNIMPLEMENTED")
    error_of(http.get(f"/v1/jobs/{UNKNOWN_JOB}/leads?format=xml"), 400, "INVALID_ARGUMENT")


def test_a_token_in_the_url_is_refused(http: httpx.Client) -> None:
    for name in ("access_token", "token"):
        answer = http.get("/v1/jobs", params={name: "eyJhbGciOi.x.y"})
        assert "token" in error_of(answer, 400, "INVALID_ARGUMENT")["message"]


def test_cors_answers_allowed_origins_only(http: httpx.Client) -> None:
    asks = {"Access-Control-Request-Method": "POST"}
    asks["Access-Control-Request-Headers"] = "authorization, content-type"
    allowed = http.options("/v1/campaigns", headers={"Origin": ALLOWED, **asks})
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert set(allowed.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST"}
    allowed_headers = allowed.headers["Access-Control-Allow-Headers"].lower().split(", ")
    assert {"authorization", "content-type", "last-event-id"} <= set(allowed_headers)
    assert int(allowed.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in allowed.headers

    for origin in ("https://evil.example", f"{ALLOWED}.evil.example", "null"):
        refused = http.options("/v1/campaigns", headers={"Origin": origin, **asks})
        assert refused.status_code == 403
        assert not [h for h in refused.headers if h.lower().startswith("access-control-")]
        plain = http.get("/v1/jobs", headers={"Origin": origin})
        assert plain.status_code == 200
        assert "Access-Control-Allow-Origin" not in plain.headers

    read = http.get("/v1/jobs", headers={"Origin": ALLOWED})
    assert read.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in read.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in http.get("/v1/jobs").headers


def test_security_headers_on_every_answer(http: httpx.Client) -> None:
    answers = [http.get("/v1/jobs"), http.get(f"/v1/jobs/{UNKNOWN_JOB}"), http.get("/nope")]
    if (STATIC_DIR / "index.html").is_file():
        page = http.get("/")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        answers.append(page)
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value, (answer.url, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp


def test_static_files_are_served_from_their_directory_only(http: httpx.Client) -> None:
    for path in sorted(STATIC_DIR.glob("*.js")) + sorted(STATIC_DIR.glob("*.css")):
        answer = http.get(f"/static/{path.name}")
        assert answer.status_code == 200 and answer.content == path.read_bytes()
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    for name in ("..%2Fapp.py", "%2E%2E%2F__init__.py", ".hidden", "no-such-file.js"):
        error_of(http.get(f"/static/{name}"), 404, "NOT_FOUND")
    error_of(http.get("/static/../app.py"), 404, "NOT_FOUND")


def test_openapi_document_and_health(http: httpx.Client) -> None:
    doc = http.get("/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {
        "/v1/campaigns",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}:cancel",
        "/v1/jobs/{job_id}/leads",
        "/v1/jobs/{job_id}/events",
    } <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {"id", "status", "version", "metrics", "createdAt"} <= set(schemas["Job"]["properties"])
    assert schemas["Job"]["properties"]["version"] == {"type": "string", "format": "int64"}
    assert "error" in schemas["Error"]["properties"]
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "SERVING"}


def test_the_web_process_has_no_nats_credentials(web_stack: Stack) -> None:
    env = web_stack.web.env if web_stack.web else {}
    assert not any(env.get(k) for k in ("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS"))
    assert web_stack.service_env("jobs")["NATS_PASSWORD"]  # the others do have theirs


def test_events_continue_across_a_jobs_service_restart(tmp_path: Path) -> None:
    """A jobs replica shutting down ends WatchJob UNAVAILABLE; the web process watches
    again from the last version it sent, so the event stream goes on to the end."""
    with Stack(tmp_path, env={"SANDBOX_LATENCY_MS": "300"}) as running:
        with httpx.Client(base_url=running.web_url, timeout=TIMEOUT) as client:
            job = submit(client, {**CAMPAIGN, "maxResults": 12, "location": "Restart City"})
            ids: list[int] = []
            statuses: list[str] = []
            url = f"/v1/jobs/{job['id']}/events"
            with client.stream("GET", url) as stream:
                current: dict[str, str] = {}
                for line in stream.iter_lines():
                    if line and not line.startswith(":"):
                        key, _, value = line.partition(": ")
                        current[key] = value
                        continue
                    if not current:
                        continue
                    assert current["event"] == "update", current  # never an error event
                    ids.append(int(current["id"]))
                    statuses.append(json.loads(current["data"])["job"]["status"])
                    current = {}
                    if len(ids) == 1:
                        assert statuses[0] not in TERMINAL  # the restart comes mid-job
                        running.processes["jobs"].restart()
        web_log = running.web.log_text() if running.web else ""
    assert "UNAVAILABLE; watching again after version" in web_log, web_log
    assert len(ids) >= 2 and ids == sorted(set(ids)), ids
    assert statuses[-1] == "JOB_STATUS_COMPLETED", statuses


# -- AUTH_MODE=jwt ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("web-jwt"), env=AUTH_ENV)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def test_tenants_see_only_their_own_jobs_on_every_route(secured: Stack) -> None:
    with httpx.Client(base_url=secured.web_url, timeout=TIMEOUT) as client:
        error_of(client.get("/v1/jobs"), 401, "UNAUTHENTICATED")
        error_of(
            client.get("/v1/jobs", headers={"Authorization": "Basic x"}), 401, "UNAUTHENTICATED"
        )
        forged = {"Authorization": f"Bearer {token('alice', key='k' * 40)}"}
        error_of(client.get("/v1/jobs", headers=forged), 401, "UNAUTHENTICATED")

        alice, bob = bearer("alice"), bearer("bob")
        job = submit(client, dict(CAMPAIGN), **alice)
        job_id = job["id"]
        assert events(client, job_id, alice)[-1][1]["job"]["status"] in TERMINAL
        assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200

        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/leads"),
            ("GET", f"/v1/jobs/{job_id}/leads?format=csv"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("POST", f"/v1/jobs/{job_id}:cancel"),
        ]:
            theirs = client.request(method, path, headers=bob)
            unknown = client.request(method, path.replace(job_id, UNKNOWN_JOB), headers=bob)
            # Exactly as not found as a job that never existed.
            mine = json.loads(json.dumps(error_of(theirs, 404, "NOT_FOUND")).replace(job_id, "?"))
            assert mine == json.loads(
                json.dumps(error_of(unknown, 404, "NOT_FOUND")).replace(UNKNOWN_JOB, "?")
            )
        listed = client.get("/v1/jobs", headers=bob).json()["jobs"]
        assert job_id not in {j["id"] for j in listed}
        assert job_id in {j["id"] for j in client.get("/v1/jobs", headers=alice).json()["jobs"]}


# -- start-up refusals --------------------------------------------------------------------


def test_auth_mode_none_refuses_a_web_addr_off_loopback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "WEB_"))}
    env |= {"AUTH_MODE": "none", "WEB_ADDR": f"0.0.0.0:{free_port()}"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.web"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "WEB_ADDR=0.0.0.0" in lines[0] and "loopback" in lines[0], lines
    assert "Traceback" not in proc.stderr
