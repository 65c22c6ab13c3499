"""CORS by an allowlist of exact origins (WEB_ALLOWED_ORIGINS): an allowed Origin gets
``Access-Control-Allow-Origin`` naming it (never ``*``, never credentials: the API takes a
bearer header, not cookies); any other origin gets no CORS header at all, and its preflight
is refused (403)."""

from __future__ import annotations

from aiohttp import web

ALLOW_METHODS = "GET, POST"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
EXPOSE_HEADERS = "Location, Content-Disposition"
MAX_AGE_S = "600"


def allowed_origin(request: web.Request, origins: frozenset[str]) -> str | None:
    """The request's Origin when it is on the list."""
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in origins else None


def preflight(request: web.Request, origins: frozenset[str]) -> web.Response:
    """The answer to an ``OPTIONS`` preflight: 204 with the CORS headers for an allowed
    origin asking for an allowed method, else 403 with none."""
    origin = allowed_origin(request, origins)
    method = request.headers.get("Access-Control-Request-Method", "")
    if origin is None or method not in ("GET", "POST"):
        return web.Response(status=403)
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE_S,
        },
    )


def add_cors_headers(
    request: web.Request, response: web.StreamResponse, origins: frozenset[str]
) -> None:
    """On every response: ``Vary: Origin`` (the answer depends on it), and for an allowed
    origin the headers that let its page read the answer."""
    response.headers.add("Vary", "Origin")
    origin = allowed_origin(request, origins)
    if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
