"""HTTP <-> gRPC: JSON bodies and query strings to requests (protobuf's JSON mapping,
camelCase or proto names accepted), messages to JSON (camelCase), and gRPC errors to
``{"error": {"code", "message", "details"}}`` with the HTTP status of google.rpc.Code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from prospect.v1 import jobs_pb2

M = TypeVar("M", bound=Message)

# Registers the google.rpc detail types in the default pool, so an Any of them prints.
DETAIL_TYPES = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest)

# google/rpc/code.proto: the HTTP status each code maps to.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


class HttpError(Exception):
    """An error answered by this process itself (bad JSON, bad query...), in the same
    shape as a gRPC one."""

    def __init__(
        self, status: int, code: grpc.StatusCode, message: str, details: list[Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []


def invalid_argument(message: str, field: str = "") -> HttpError:
    """400 INVALID_ARGUMENT with a BadRequest naming ``field`` when given."""
    details: list[Any] = []
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(any_json(error_details_pb2.BadRequest(field_violations=[violation])))
    return HttpError(400, grpc.StatusCode.INVALID_ARGUMENT, message, details)


def to_json(message: Message) -> dict[str, Any]:
    """A message as JSON data: camelCase names, every field (defaults too), int64 as
    strings, enums by name, timestamps as RFC 3339."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def dumps(data: Any) -> str:
    """Compact one-line JSON (what an SSE ``data:`` line needs)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def any_json(message: Message) -> dict[str, Any]:
    """A detail message as the JSON of a ``google.protobuf.Any`` (``@type`` first)."""
    return {
        "@type": f"type.googleapis.com/{message.DESCRIPTOR.full_name}",
        **json_format.MessageToDict(message),
    }


def error_body(code: grpc.StatusCode, message: str, details: list[Any]) -> dict[str, Any]:
    return {"error": {"code": code.name, "message": message, "details": details}}


def from_rpc_error(err: grpc.aio.AioRpcError) -> HttpError:
    """The HTTP error answering a failed call: its code, message and rich details."""
    status: status_pb2.Status | None = None
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details that disagree with the call's own code: left out
        status = None
    details = [json_format.MessageToDict(d) for d in status.details] if status else []
    code = err.code()
    message = err.details() or code.name
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) and status is None:
        message = "internal error"  # a transport failure: nothing of it is shown
    return HttpError(HTTP_STATUS.get(code, 500), code, message, details)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A JSON object, or 400."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_argument(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid_argument("the body must be a JSON object")
    return data


def submit_request(body: Mapping[str, Any]) -> jobs_pb2.SubmitCampaignRequest:
    """A SubmitCampaign request from either body: ``{"config": {...}, "idempotencyKey":
    ...}`` (the request itself) or the campaign config's fields with an optional
    ``idempotencyKey`` (and ``onBehalfOf``, ``maxEstimatedCost``) beside them."""
    outside = (
        ("idempotencyKey", "idempotency_key"),
        ("onBehalfOf", "on_behalf_of"),
        ("maxEstimatedCost", "max_estimated_cost"),
        ("maxEstimatedCostMicros", "max_estimated_cost_micros"),
    )
    return parse_dict(config_body(body, outside), jobs_pb2.SubmitCampaignRequest())


def config_body(
    body: Mapping[str, Any], outside: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """A request body holding a ``config``: as given, or the campaign config's fields flat
    with the request's own fields ``outside`` (camelCase, proto name) beside them."""
    data = dict(body)
    if "config" not in data:
        outer = {}
        for camel, proto in outside:
            for key in (camel, proto):
                if key in data:
                    outer[camel] = data.pop(key)
        data = {**outer, "config": data}
    return data


def parse_dict(data: Mapping[str, Any], message: M) -> M:
    """``data`` into ``message`` (camelCase or proto names), or 400 naming the problem."""
    try:
        json_format.ParseDict(dict(data), message)
    except json_format.ParseError as exc:
        raise invalid_argument(str(exc)) from None
    return message


def list_jobs_request(query: Mapping[str, str]) -> jobs_pb2.ListJobsRequest:
    """``?pageSize=&pageToken=&status=`` (status: ``COMPLETED`` or ``JOB_STATUS_COMPLETED``)."""
    data: dict[str, Any] = {}
    for key, value in query.items():
        if key in ("pageSize", "page_size"):
            if not value.isdigit():
                raise invalid_argument("pageSize must be a whole number", "page_size")
            data["pageSize"] = int(value)
        elif key in ("pageToken", "page_token"):
            data["pageToken"] = value
        elif key == "status":
            name = value.upper()
            data["status"] = name if name.startswith("JOB_STATUS_") else f"JOB_STATUS_{name}"
        else:
            raise invalid_argument(f"unknown query parameter {key!r}")
    return parse_dict(data, jobs_pb2.ListJobsRequest())


def query_fields(query: Mapping[str, str], message: Message) -> dict[str, Any]:
    """``?name=value`` parameters as JSON for the top-level scalar fields of ``message``
    (camelCase or proto names), or 400 naming an unknown parameter: ``?pageSize=10&jobId=...``.
    Numbers stay strings (protobuf's JSON mapping takes them so); booleans are ``true`` or
    ``false``."""
    by_name = {}
    for field in message.DESCRIPTOR.fields:
        if field.message_type is None and not field.is_repeated:
            by_name[field.name] = by_name[field.json_name] = field
    data: dict[str, Any] = {}
    for key, value in query.items():
        if key not in by_name:
            raise invalid_argument(f"unknown query parameter {key!r}")
        field = by_name[key]
        if field.type == field.TYPE_BOOL:
            if value not in ("true", "false"):
                raise invalid_argument(f"{key} must be true or false", field.name)
            data[field.json_name] = value == "true"
        else:
            data[field.json_name] = value
    return data
