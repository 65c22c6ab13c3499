"""Page tokens of ListJobs and ListLeads: opaque and signed, bound to the listing they came
from, and the positions they carry checked field by field (a token signed with the right
secret still carries only what the signer put there)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from services.common.errors import InvalidArgument
from services.jobs.validation import is_job_id


class PageTokens:
    """Opaque, signed page tokens: a forged or altered token is InvalidArgument.

    A token binds the position to the listing it came from (``scope``: the user and the
    query), so it cannot be replayed against another listing.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sign(self, body: bytes) -> str:
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()[:32]

    def encode(self, scope: str, position: dict[str, Any]) -> str:
        body = json.dumps({"s": scope, "p": position}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + self._sign(body)

    def decode(self, token: str, scope: str, field: str = "page_token") -> dict[str, Any] | None:
        if not token:
            return None
        try:
            encoded, signature = token.rsplit(".", 1)
            body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            if not hmac.compare_digest(signature, self._sign(body)):
                raise ValueError("signature")
            data = json.loads(body)
            if data["s"] != scope or not isinstance(data["p"], dict):
                raise ValueError("scope")
        except (ValueError, KeyError, TypeError):
            raise _not_returned(field) from None
        position: dict[str, Any] = data["p"]
        return position


def _not_returned(field: str) -> InvalidArgument:
    return InvalidArgument(field, "is not a token this listing returned")


def jobs_position(position: dict[str, Any], field: str = "page_token") -> tuple[datetime, str]:
    """(created_at, job id) of the last job a ListJobs page showed, from its token's
    position; InvalidArgument naming ``field`` when the position is not one (a token signed
    with the right secret still carries only what the signer put there: check it all)."""
    created, last_id = position.get("c"), position.get("i")
    if not isinstance(created, str) or not is_job_id(last_id) or len(position) != 2:
        raise _not_returned(field)
    try:
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive")
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):  # year 1 at +05:00 is before datetime.min in UTC
        raise _not_returned(field) from None
    return when, str(last_id)


def leads_position(position: dict[str, Any], field: str = "page_token") -> int:
    """The rank of the last lead a ListLeads page showed, from its token's position;
    InvalidArgument naming ``field`` when the position is not one."""
    rank = position.get("r")
    if type(rank) is not int or not 0 <= rank < 2**31 or len(position) != 1:
        raise _not_returned(field)
    return rank
