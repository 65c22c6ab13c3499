"""What the end-to-end security tests share: the JWT settings of a secured stack (HS256
with an issuer and an audience; secrets drawn at random on import), the tokens it accepts
(a user's, the scheduler's service token), and the CLI's submit-and-watch."""

from __future__ import annotations

import secrets

from tests.e2e import tokens as t
from tests.e2e.tokens import Metadata

SECRET, PAGE_SECRET = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
ISSUER, AUDIENCE = "https://auth.prospect.test", "prospect-jobs"
AUTH_ENV = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET, "SANDBOX_LATENCY_MS": "5"}
AUTH_ENV |= {"PAGE_TOKEN_SECRET": PAGE_SECRET}
AUTH_ENV |= {"AUTH_JWT_ISSUER": ISSUER, "AUTH_JWT_AUDIENCE": AUDIENCE}


def token(user: str, *, role: str | None = None, key: str = SECRET, **claims: object) -> str:
    payload = {**t.claims(user, issuer=ISSUER, audience=AUDIENCE, role=role), **claims}
    return t.hs256(key, {k: v for k, v in payload.items() if v is not None})


def as_user(user: str) -> Metadata:
    return t.bearer(token(user))


SERVICE = t.bearer(token("scheduler", role="service"))

SUBMIT_AND_WATCH = ("submit", "bakery", "Springfield 9", "--max-results", "4", "--watch")
