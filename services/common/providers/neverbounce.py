"""NeverBounce v4 single check: is this address deliverable?

Wire format (read 2026-11-23):

- https://developers.neverbounce.com/docs/verifying-an-email: ``GET`` or ``POST
  /v4/single/check`` with ``key`` and ``email``. This adapter POSTs them as a form body
  (https://developers.neverbounce.com/v4.0/reference, "Authentication", takes the key in a
  form or JSON body), so the key never appears in a URL. A success is
  ``{"status": "success", "result": ...}`` with ``result`` one of ``valid``, ``invalid``,
  ``disposable``, ``catchall``, ``unknown``: the lead's ``email_status`` as is. NeverBounce
  says ``catchall``, never ``accept_all`` (that is Hunter's word; the original ProspectPro
  app mixed the two up).
- https://developers.neverbounce.com/reference/error-handling: **errors arrive as HTTP 200**
  with ``status`` other than ``success`` and a ``message``: ``auth_failure`` (bad key) is
  permanent; ``temp_unavail`` (partial outage) is retried; ``throttle_triggered`` (rate
  limit, no ``Retry-After``) backs every worker off for our own backoff; ``general_failure``
  (a bad request) and ``bad_referrer`` are permanent. HTTP 4xx are permanent, 5xx are
  retried. Messages may quote the key (``Invalid API key 'secret_...'``): it is scrubbed.

Cost: every check costs one credit, duplicates included (``PRICE_NEVERBOUNCE_CHECK``, the
1k-5k tier); answers that are errors are not charged. NeverBounce publishes no per-second
limit; its single check is meant for interactive use, lists belong on ``/v4/jobs``.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from services.common.providers.base import Verification
from services.common.providers.http import (
    HttpProvider,
    Outcome,
    json_object,
    ok,
    permanent,
    rate_limited,
    retry,
    retry_after_s,
)

PROVIDER = "neverbounce"
RESULTS = frozenset({"valid", "invalid", "disposable", "catchall", "unknown"})
_PERMANENT = frozenset({"auth_failure", "general_failure", "bad_referrer"})

log = logging.getLogger(__name__)


def _classify(response: httpx.Response) -> Outcome[str]:
    code = response.status_code
    if code == 429:  # not documented, but an HTTP rate limit is one
        return rate_limited("too many requests (429)", retry_after_s(response))
    if code >= 500 or code == 408:
        return retry(f"server error ({code})", retry_after_s(response))
    if code >= 400:
        kind = "auth_error" if code in (401, 403) else ""
        return permanent(f"request refused ({code})", kind=kind)
    if not response.is_success:
        return retry(f"unexpected answer (HTTP {code})")
    body: dict[str, Any] = json_object(response)
    status = body["status"]
    if not isinstance(status, str):
        raise TypeError("status is not a string")
    if status == "success":
        result = body["result"]
        if not isinstance(result, str):
            raise TypeError("result is not a string")
        if result not in RESULTS:
            log.warning("unexpected NeverBounce result %r read as unknown", result[:40])
            result = "unknown"
        return ok(result)
    cause = f"{status}: {body.get('message') or 'no message'}"
    if status == "throttle_triggered":
        return rate_limited(cause)
    if status == "temp_unavail":
        return retry(cause)
    if status == "auth_failure":
        return permanent(cause, kind="auth_error")
    if status == "general_failure" and "credit" in cause.lower():
        return permanent(cause, kind="credits_exhausted")
    if status in _PERMANENT:
        return permanent(cause)
    return permanent(f"unexpected status {cause}")


class NeverBounce(HttpProvider):
    """:class:`~services.common.providers.base.EmailVerifier` over NeverBounce v4."""

    name = PROVIDER
    key_setting = "neverbounce_api_key"
    base_url_setting = "neverbounce_base_url"
    path = "/v4/single/check"

    def price(self, operation: str) -> float:
        """One credit for ``verify`` (0.0 for other operations)."""
        return self._settings.price_neverbounce_check if operation == "verify" else 0.0

    async def verify(self, email: str) -> Verification:
        """NeverBounce's result for ``email``; one ``verify`` charge per successful check.

        An address without an ``@`` is ``invalid`` without a call (and free).
        """
        email = email.strip()
        if "@" not in email:
            return Verification(status="invalid")
        form = {"key": self._key, "email": email}

        def build() -> httpx.Request:
            return self._client.build_request("POST", self._url, data=form)

        price = self._settings.price_neverbounce_check
        result, charges = await self._paid("verify", price, build, _classify)
        return Verification(status=result, charges=charges)
