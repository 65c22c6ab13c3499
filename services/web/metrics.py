"""The web process's Prometheus metrics (see :mod:`services.common.metrics` for the
conventions and the server): requests by route template and status, open event streams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Gauge

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNMATCHED = "unmatched"  # the route of a request no route matched (404, 405, preflight)

HTTP_REQUESTS = Counter(
    "prospect_http_requests",
    "HTTP requests answered, by route template (never the raw path) and status code.",
    ["route", "code"],
)
SSE_STREAMS = Gauge("prospect_sse_streams", "Open Server-Sent Events streams (job events).")


def route_of(request: web.Request) -> str:
    """The template of the route ``request`` matched (``/v1/jobs/{job_id}``), else
    :data:`UNMATCHED`: a label never holds a job id or anything a client chose."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answered request (the outermost middleware: errors included)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        HTTP_REQUESTS.labels(route_of(request), str(exc.status)).inc()
        raise
    HTTP_REQUESTS.labels(route_of(request), str(response.status)).inc()
    return response
