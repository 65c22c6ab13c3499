"""The OpenAPI document lists every route the proto's http options give, each with its
request and response schemas generated from the proto."""

from __future__ import annotations

from services.web import openapi
from services.web.app import http_rules


def test_every_http_rule_is_in_the_document() -> None:
    doc = openapi.document()
    for rpc, (verb, path) in http_rules().items():
        assert path in doc["paths"], f"{rpc}: {path} missing"
        operation = doc["paths"][path].get(verb.lower())
        assert operation is not None, f"{rpc}: {verb} {path} missing"
        assert operation["operationId"] == rpc


def test_generated_routes_carry_their_messages() -> None:
    doc = openapi.document()
    schemas = doc["components"]["schemas"]
    retry = doc["paths"]["/v1/jobs/{job_id}:retry"]["post"]
    body = retry["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RetryJobRequest"}
    answer = retry["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/SubmitCampaignResponse"}
    history = doc["paths"]["/v1/jobs/{job_id}/history"]["get"]
    names = {(p["name"], p["in"]) for p in history["parameters"]}
    assert names == {("job_id", "path"), ("pageSize", "query"), ("pageToken", "query")}
    events = schemas["ListJobEventsResponse"]["properties"]["events"]
    assert events == {"type": "array", "items": {"$ref": "#/components/schemas/JobEvent"}}
    assert schemas["JobEvent"]["properties"]["at"]["format"] == "date-time"
    assert {"retryOf", "retriedBy"} <= set(schemas["Job"]["properties"])
