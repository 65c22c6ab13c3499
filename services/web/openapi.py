"""The OpenAPI 3.1 document of the HTTP API (``GET /v1/openapi.json``); the message schemas
are generated from the proto descriptors, with protobuf's JSON mapping (camelCase names,
int64 as strings, enums by name, timestamps as RFC 3339 strings).

Every route the proto's ``google.api.http`` options give is in it: the few whose handlers do
more than transcode (a submit answering 202, leads as CSV, events as SSE) are described by
hand, every other one is generated from its RPC (path variables, query parameters or JSON
body, the response message), as the generic transcoder serves it."""

from __future__ import annotations

import re
from typing import Any

from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from prospect.v1 import jobs_pb2

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.Empty": {"type": "object"},
}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _single(value, schemas)}
    one = _single(field, schemas)
    repeated = field.is_repeated
    return {"type": "array", "items": one} if repeated else one


def _single(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.enum_type is not None:
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    if field.message_type is not None:
        name = field.message_type.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        _message_schema(field.message_type, schemas)
        return {"$ref": f"#/components/schemas/{field.message_type.name}"}
    return dict(_SCALARS[field.type])


def _message_schema(message: Descriptor, schemas: dict[str, Any]) -> None:
    if message.name in schemas:
        return
    schemas[message.name] = {}  # placed first: recursive messages end here
    properties = {f.json_name: _field_schema(f, schemas) for f in message.fields}
    schemas[message.name] = {"type": "object", "properties": properties}


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "gRPC code name: NOT_FOUND..."},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "description": "google.rpc.Status details (ErrorInfo, BadRequest...)",
                    "items": {
                        "type": "object",
                        "properties": {"@type": {"type": "string"}},
                        "additionalProperties": True,
                    },
                },
            },
        }
    },
}
_SUBMIT_BODY = {
    "description": (
        "Either the SubmitCampaignRequest ({config, idempotencyKey}) or the CampaignConfig's "
        "fields with idempotencyKey beside them; camelCase or proto field names"
    ),
    "oneOf": [
        {"$ref": "#/components/schemas/SubmitCampaignRequest"},
        {
            "allOf": [
                {"$ref": "#/components/schemas/CampaignConfig"},
                {"type": "object", "properties": {"idempotencyKey": {"type": "string"}}},
            ]
        },
    ],
}


def _json(ref: str, description: str = "OK") -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": "#/components/responses/Error"} for s in statuses}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COMMON = (400, 401, 404, 429, 503)


def _path_variables(template: str) -> list[str]:
    return re.findall(r"\{([a-z_][a-z0-9_]*)", template)


def _message_ref(message: Descriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if message.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[message.full_name])
    _message_schema(message, schemas)
    return {"$ref": f"#/components/schemas/{message.name}"}


def _generated_operation(method: MethodDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    """The operation of a route the generic transcoder serves: the request from the path's
    variables, then the JSON body (``body: "*"``) or the query parameters."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    template = str(getattr(rule, rule.WhichOneof("pattern") or "get"))
    in_path = _path_variables(template)
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in in_path
    ]
    operation: dict[str, Any] = {"operationId": method.name}
    if rule.body == "*":
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": _message_ref(method.input_type, schemas)}},
        }
    else:
        parameters += [
            {"name": f.json_name, "in": "query", "schema": _field_schema(f, schemas)}
            for f in method.input_type.fields
            if f.name not in in_path and f.message_type is None
        ]
    operation["parameters"] = parameters
    answer = {"schema": _message_ref(method.output_type, schemas)}
    operation["responses"] = {
        "200": {"description": "OK", "content": {"application/json": answer}},
        **_errors(*_COMMON, 409),
    }
    return operation


def _generated_paths(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Add to ``paths`` every route of the proto's http options not already there."""
    for method in jobs_pb2.DESCRIPTOR.services_by_name["JobService"].methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is None or verb == "custom":
            continue
        path = str(getattr(rule, verb))
        if verb in paths.get(path, {}):
            continue
        paths.setdefault(path, {})[verb] = _generated_operation(method, schemas)


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    schemas: dict[str, Any] = {}
    for message in ("SubmitCampaignRequest", "Job", "JobUpdate", "ListJobsResponse", "Lead"):
        _message_schema(jobs_pb2.DESCRIPTOR.message_types_by_name[message], schemas)
    schemas["Error"] = _ERROR
    schemas["Leads"] = {
        "type": "object",
        "properties": {"leads": {"type": "array", "items": {"$ref": "#/components/schemas/Lead"}}},
    }
    query = [
        {"name": "pageSize", "in": "query", "schema": {"type": "integer"}},
        {"name": "pageToken", "in": "query", "schema": {"type": "string"}},
        {"name": "status", "in": "query", "schema": {"type": "string"},
         "description": "COMPLETED, JOB_STATUS_COMPLETED...; none: every status"},
    ]  # fmt: skip
    paths = {
        "/v1/campaigns": {
            "post": {
                "operationId": "SubmitCampaign",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _SUBMIT_BODY}},
                },
                "responses": {
                    "202": {
                        **_json("Job", "Accepted: the job, at Location /v1/jobs/{id}"),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **_errors(*_COMMON, 409, 413),
                },
            }
        },
        "/v1/jobs": {
            "get": {
                "operationId": "ListJobs",
                "parameters": query,
                "responses": {"200": _json("ListJobsResponse"), **_errors(*_COMMON)},
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "operationId": "GetJob",
                "parameters": [_JOB_ID],
                "responses": {"200": _json("Job"), **_errors(*_COMMON)},
            }
        },
        "/v1/jobs/{job_id}:cancel": {
            "post": {
                "operationId": "CancelJob",
                "parameters": [_JOB_ID],
                "responses": {"200": _json("Job"), **_errors(*_COMMON)},
            }
        },
        "/v1/jobs/{job_id}/leads": {
            "get": {
                "operationId": "ListLeads",
                "description": "Every lead of the job (all pages); format=csv: the CLI's CSV",
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["json", "csv"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Leads"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(*_COMMON),
                },
            }
        },
        "/v1/jobs/{job_id}/events": {
            "get": {
                "operationId": "WatchJob",
                "description": (
                    "Server-Sent Events: one 'update' event per JobUpdate (id = job version, "
                    "data = the JobUpdate JSON on one line), ': keep-alive' comments every "
                    "15 s, the stream ends after the terminal update. Resume with the "
                    "Last-Event-ID header (or afterVersion). A failure after the stream "
                    "began is an 'error' event carrying the Error JSON."
                ),
                "parameters": [
                    _JOB_ID,
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    {"name": "afterVersion", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "text/event-stream of JobUpdate",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(*_COMMON),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "Health",
                "responses": {
                    "200": {"description": "the jobs API is reachable"},
                    "503": {"description": "it is not"},
                },
            }
        },
    }
    _generated_paths(paths, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "prospect",
            "version": "v1",
            "description": (
                "The jobs API over HTTP/JSON (protobuf JSON mapping). Authenticate with "
                "'Authorization: Bearer <JWT>' (AUTH_MODE=jwt); never a token in the URL."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Error": _json("Error", "An error (the gRPC code, mapped to HTTP)")},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
