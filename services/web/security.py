"""What every request and response goes through: the security headers of every answer,
no token in a URL, and the caller's bearer token passed on to the jobs API."""

from __future__ import annotations

import re

import grpc
from aiohttp import web

from services.web.transcode import HttpError, invalid_argument

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TOKEN_PARAMS = ("access_token", "token")
_BEARER = re.compile(r"Bearer [\x21-\x7e]+")


def add_security_headers(response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def refuse_token_in_url(request: web.Request) -> None:
    """A URL ends up in logs, history and Referer headers: tokens go in a header only."""
    for name in TOKEN_PARAMS:
        if name in request.query:
            raise invalid_argument(
                f"a token in the URL ({name}=) is refused: send 'Authorization: Bearer ...'",
                name,
            )


def call_metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the request's ``Authorization: Bearer`` header (checked by
    the jobs service); none without one."""
    header = request.headers.get("Authorization")
    if header is None:
        return ()
    if not _BEARER.fullmatch(header.strip()):
        raise HttpError(
            401, grpc.StatusCode.UNAUTHENTICATED, "Authorization must be 'Bearer <token>'"
        )
    return (("authorization", header.strip()),)
