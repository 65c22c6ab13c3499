"""The aiohttp application: routes, the error middleware (every error is the JSON error
shape), CORS and security headers on every response, and the static page."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.api import annotations_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.render import leads_csv
from services.common import tracing
from services.web import cors, openapi, sse
from services.web.metrics import SSE_STREAMS, count_requests
from services.web.security import add_security_headers, call_metadata, refuse_token_in_url
from services.web.transcode import (
    HttpError,
    config_body,
    dumps,
    error_body,
    from_rpc_error,
    invalid_argument,
    list_jobs_request,
    parse_dict,
    parse_json_body,
    query_fields,
    submit_request,
    to_json,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
RPC_TIMEOUT_S = 30.0
LEADS_PAGE_SIZE = 100
_STATIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

STUB: web.AppKey[jobs_pb2_grpc.JobServiceStub] = web.AppKey("stub")
CHANNEL: web.AppKey[grpc.aio.Channel] = web.AppKey("channel")
ORIGINS: web.AppKey[frozenset[str]] = web.AppKey("origins")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: object, status: int = 200, **kw: object) -> web.Response:
    return web.Response(
        text=dumps(data),
        status=status,
        content_type="application/json",
        **kw,  # type: ignore[arg-type]
    )


def error_response(err: HttpError) -> web.Response:
    return json_response(error_body(err.code, err.message, err.details), err.status)


# HTTP errors of aiohttp itself (routing, body size) as gRPC codes.
_HTTP_CODES = {
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": {...}}``: gRPC errors with their code's HTTP status,
    aiohttp's own (404, 405, 413) likewise."""
    try:
        if request.method == "OPTIONS":
            return cors.preflight(request, request.app[ORIGINS])
        refuse_token_in_url(request)
        return await handler(request)
    except HttpError as err:
        return error_response(err)
    except grpc.aio.AioRpcError as err:
        return error_response(from_rpc_error(err))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)
        response = error_response(HttpError(exc.status, code, exc.reason))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    add_security_headers(response)
    cors.add_cors_headers(request, response, request.app[ORIGINS])


def _stub(request: web.Request) -> jobs_pb2_grpc.JobServiceStub:
    return request.app[STUB]


def traced(handler: Handler) -> Handler:
    """The route in a server span, a child of the caller's ``traceparent`` header when it
    sent one; its RPCs carry the span's context (services/common/tracing.py)."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        resource = request.match_info.route.resource
        name = f"{request.method} {resource.canonical if resource else handler.__name__}"
        with tracing.span(name, kind=tracing.SERVER, parent=request.headers):
            return await handler(request)

    return wrapper


@traced
async def submit_campaign(request: web.Request) -> web.Response:
    submit = submit_request(parse_json_body(await request.read()))
    md = call_metadata(request) + tracing.grpc_outgoing()
    stub = _stub(request)
    answer = await stub.SubmitCampaign(submit, metadata=md, timeout=RPC_TIMEOUT_S)
    get = jobs_pb2.GetJobRequest(job_id=answer.job_id)
    job = await stub.GetJob(get, metadata=md, timeout=RPC_TIMEOUT_S)
    return json_response(to_json(job), 202, headers={"Location": f"/v1/jobs/{job.id}"})


async def list_jobs(request: web.Request) -> web.Response:
    req = list_jobs_request(request.query)
    page = await _stub(request).ListJobs(
        req, metadata=call_metadata(request), timeout=RPC_TIMEOUT_S
    )
    return json_response(to_json(page))


async def get_job(request: web.Request) -> web.Response:
    req = jobs_pb2.GetJobRequest(job_id=request.match_info["job_id"])
    job = await _stub(request).GetJob(req, metadata=call_metadata(request), timeout=RPC_TIMEOUT_S)
    return json_response(to_json(job))


@traced
async def cancel_job(request: web.Request) -> web.Response:
    req = jobs_pb2.CancelJobRequest(job_id=request.match_info["job_id"])
    stub = _stub(request)
    md = call_metadata(request) + tracing.grpc_outgoing()
    job = await stub.CancelJob(req, metadata=md, timeout=RPC_TIMEOUT_S)
    return json_response(to_json(job))


async def list_leads(request: web.Request) -> web.Response:
    """Every page of ListLeads: ``{"leads": [...]}``, or ``?format=csv`` the CLI's CSV."""
    job_id = request.match_info["job_id"]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise invalid_argument("format must be json or csv", "format")
    md, stub = call_metadata(request), _stub(request)
    leads: list[jobs_pb2.Lead] = []
    token = ""
    while True:
        req = jobs_pb2.ListLeadsRequest(job_id=job_id, page_size=LEADS_PAGE_SIZE, page_token=token)
        page = await stub.ListLeads(req, metadata=md, timeout=RPC_TIMEOUT_S)
        leads.extend(page.leads)
        token = page.next_page_token
        if not token:
            break
    if fmt == "csv":
        return web.Response(
            body=leads_csv(leads).encode(),
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{job_id}.csv"',
            },
        )
    return json_response({"leads": [to_json(lead) for lead in leads]})


def _after_version(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("afterVersion") or "0"
    if not raw.isdigit():
        raise invalid_argument(
            "Last-Event-ID / afterVersion must be a job version", "after_version"
        )
    return int(raw)


async def watch_job(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of the job (see :mod:`services.web.sse`). The job is read first,
    so an unknown job (or another user's) is a plain 404 JSON answer."""
    job_id = request.match_info["job_id"]
    after = _after_version(request)
    md, stub = call_metadata(request), _stub(request)
    await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=md, timeout=RPC_TIMEOUT_S)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    SSE_STREAMS.inc()
    try:
        await sse.stream_job(stub, job_id, after, md, response.write)
    except grpc.aio.AioRpcError as err:
        failure = from_rpc_error(err)
        await response.write(
            sse.error_event(error_body(failure.code, failure.message, failure.details))
        )
    except TimeoutError as exc:
        body = error_body(grpc.StatusCode.UNAVAILABLE, str(exc), [])
        await response.write(sse.error_event(body))
    finally:
        SSE_STREAMS.dec()
    await response.write_eof()
    return response


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi.document())


async def healthz(request: web.Request) -> web.Response:
    """200 once the channel to the jobs API is ready (connecting if it is idle)."""
    channel = request.app[CHANNEL]
    try:
        await asyncio.wait_for(channel.channel_ready(), 2.0)
    except TimeoutError:
        return json_response({"status": "NOT_SERVING"}, 503)
    return json_response({"status": "SERVING"})


async def index(request: web.Request) -> web.FileResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(page)


async def static_file(request: web.Request) -> web.FileResponse:
    """A file directly under ``static/`` (no dot files, no sub-directories)."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if not _STATIC_NAME.fullmatch(name) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def http_rules() -> dict[str, tuple[str, str]]:
    """RPC name -> (HTTP method, path template) from the ``google.api.http`` options of
    ``prospect.v1.JobService``: the proto says which route each RPC has."""
    rules = {}
    for method in _methods():
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is not None:
            rules[method.name] = (verb.upper(), str(getattr(rule, verb)))
    return rules


def _methods() -> list[MethodDescriptor]:
    return list(jobs_pb2.DESCRIPTOR.services_by_name["JobService"].methods)


def transcoded(method: MethodDescriptor) -> Handler:
    """The route of a unary RPC by the gRPC-transcoding rules: the request from the path's
    variables, then the JSON body (``body: "*"``) or, without one, the query parameters;
    the answer as JSON (200). RPCs whose route does more (a submit answering 202, leads as
    CSV, events as SSE) have handlers of their own."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    request_type = message_factory.GetMessageClass(method.input_type)

    @traced
    async def handler(request: web.Request) -> web.Response:
        data: dict[str, Any] = {}
        if rule.body == "*":
            raw = await request.read()
            data = parse_json_body(raw) if raw.strip() else {}
            if set(method.input_type.fields_by_name) == {"config"}:
                data = config_body(data)  # EstimateCampaign: {"config": {...}} or flat
        else:
            data = query_fields(request.query, request_type())
        message = parse_dict(data, request_type())
        for name, value in request.match_info.items():
            given = getattr(message, name)
            if given and given != value:
                raise invalid_argument(f"{name} in the body differs from the path's", name)
            setattr(message, name, value)
        md = call_metadata(request) + tracing.grpc_outgoing()
        call = getattr(_stub(request), method.name)
        answer = await call(message, metadata=md, timeout=RPC_TIMEOUT_S)
        return json_response(to_json(answer))

    handler.__name__ = method.name
    return handler


def _aiohttp_path(template: str) -> str:
    """``/v1/jobs/{job_id}:cancel`` as an aiohttp route: a variable is one path segment,
    up to a ``/`` or a ``:`` (the custom verb)."""
    return re.sub(r"\{(\w+)\}", r"{\1:[^/:]+}", template)


def build_app(
    stub: jobs_pb2_grpc.JobServiceStub,
    channel: grpc.aio.Channel,
    origins: frozenset[str],
    max_body_bytes: int,
) -> web.Application:
    app = web.Application(middlewares=[count_requests, errors], client_max_size=max_body_bytes)
    app[STUB], app[CHANNEL], app[ORIGINS] = stub, channel, origins
    app.on_response_prepare.append(_on_prepare)
    handlers = {
        "SubmitCampaign": submit_campaign,
        "ListJobs": list_jobs,
        "GetJob": get_job,
        "CancelJob": cancel_job,
        "ListLeads": list_leads,
        "WatchJob": watch_job,
    }
    methods = {method.name: method for method in _methods()}
    for rpc, (verb, path) in http_rules().items():
        handler = handlers.get(rpc) or transcoded(methods[rpc])
        app.router.add_route(verb, _aiohttp_path(path), handler)
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    return app
