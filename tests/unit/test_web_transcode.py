"""The web process's pure parts: request bodies and queries to gRPC requests, the gRPC to
HTTP status table, the OpenAPI document's references, and the WEB_* settings' rules."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from prospect.v1 import jobs_pb2
from services.common.errors import ConfigError
from services.common.settings import Settings
from services.web import openapi, sse
from services.web.transcode import HTTP_STATUS, HttpError, list_jobs_request, submit_request

CONFIG = {"businessType": "bakery", "location": "Portland, OR", "maxResults": 3}


def test_both_submit_bodies_give_the_same_request() -> None:
    flat = submit_request({**CONFIG, "idempotencyKey": "k1"})
    wrapped = submit_request({"config": CONFIG, "idempotencyKey": "k1"})
    proto_names = submit_request(
        {"business_type": "bakery", "location": "Portland, OR", "max_results": 3,
         "idempotency_key": "k1"}
    )  # fmt: skip
    assert flat == wrapped == proto_names
    assert flat.config.max_results == 3 and flat.idempotency_key == "k1"


@pytest.mark.parametrize(
    "body", [{"noSuchField": 1}, {"maxResults": "many"}, {"config": {"location": 5}}]
)
def test_bad_bodies_are_invalid_argument(body: dict[str, Any]) -> None:
    with pytest.raises(HttpError) as caught:
        submit_request(body)
    assert caught.value.status == 400 and caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_list_query() -> None:
    request = list_jobs_request({"pageSize": "7", "pageToken": "t", "status": "cancelled"})
    assert request == jobs_pb2.ListJobsRequest(
        page_size=7, page_token="t", status=jobs_pb2.JOB_STATUS_CANCELLED
    )
    for query in ({"pageSize": "-1"}, {"status": "NAPPING"}, {"sort": "x"}):
        with pytest.raises(HttpError):
            list_jobs_request(query)


def test_every_grpc_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.FAILED_PRECONDITION] == 400
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503


def test_an_event_is_one_update_on_one_data_line() -> None:
    update = jobs_pb2.JobUpdate(job=jobs_pb2.Job(id="job_1", version=42), message="a\nb")
    text = sse.event(update).decode()
    lines = text.split("\n")
    assert lines[:2] == ["id: 42", "event: update"] and text.endswith("\n\n")
    assert json.loads(lines[2].removeprefix("data: "))["message"] == "a\nb"
    assert len(lines) == 5  # id, event, data, and the blank line that ends the event


def test_openapi_references_resolve() -> None:
    doc = openapi.document()
    text = json.dumps(doc)
    refs = {part.split('"')[0] for part in text.split('"$ref": "')[1:]}
    for ref in refs:
        node: Any = doc
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]
    assert "#/components/schemas/Job" in refs


@pytest.mark.parametrize(
    "env",
    [
        {"WEB_ADDR": "8080"},
        {"WEB_ALLOWED_ORIGINS": "*"},
        {"WEB_ALLOWED_ORIGINS": "https://app.example.com/"},
        {"WEB_ALLOWED_ORIGINS": "app.example.com"},
        {"WEB_MAX_BODY_BYTES": "0"},
        {"WEB_JOBS_TLS_CA": "/no/such/ca.pem"},
    ],
)
def test_web_settings_are_checked(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(env)


def test_web_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.web_addr == "127.0.0.1:8080" and settings.web_origins == frozenset()
    assert settings.web_max_body_bytes == 64 * 1024
    many = Settings.from_env({"WEB_ALLOWED_ORIGINS": " https://a.example , http://b:8080 "})
    assert many.web_origins == {"https://a.example", "http://b:8080"}
