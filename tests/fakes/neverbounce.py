"""A fake NeverBounce API v4: the single check over real HTTP.

Wire format, from https://developers.neverbounce.com/reference/single-check,
https://developers.neverbounce.com/docs/verifying-an-email and
https://developers.neverbounce.com/reference/error-handling, and the official SDKs'
tests (NeverBounce/NeverBounceApi-Python, -DotNet):

- ``GET`` or ``POST /v4/single/check`` (``/v4.1/...`` and ``/v4.2/...``, which the SDKs
  call, are served the same) with ``key`` and ``email`` in the query string, or for POST
  in a form-encoded or JSON body; optional ``address_info``, ``credits_info``, ``timeout``.
- Success: HTTP 200 ``{"status": "success", "result": "valid|invalid|disposable|catchall|
  unknown", "flags": [...], "suggested_correction": "", "retry_token": "",
  "execution_time": N}`` plus ``address_info`` / ``credits_info`` objects when asked for.
- **Errors are HTTP 200 too**, told apart by ``status``: ``auth_failure`` (a wrong key),
  ``general_failure`` (e.g. "Missing required parameter 'key'"; a missing key is this, not
  an auth failure), ``temp_unavail`` (retry), ``throttle_triggered`` (rate limited: retry
  with your own backoff, no Retry-After is sent), ``bad_referrer``; each with ``message``
  and ``execution_time``. NeverBounce publishes no per-second limit; the limit here is only
  what a test sets with :meth:`~tests.fakes.base.FakeServer.set_rate_limit`.

Faults: "server_error" is an HTTP 503 (NeverBounce documents no body for 5xx; this one is
JSON with ``temp_unavail``); "credits_exhausted" is a 200 ``general_failure`` saying the
balance is insufficient (NeverBounce documents no dedicated status for it); besides the
shared kinds, "temp_unavail", "general_failure" and "bad_referrer" answer those statuses.

Billing: 1 credit per check, duplicates included ("1 Credit = 1 Email Verification",
https://neverbounce.com/help/pricing-and-billing/how-does-pricing-and-billing-work), at
$0.008 (the 1k-5k pay-as-you-go band). An address the world does not know gets a
deterministic result from its hash and is still billed (job key "").
"""

from __future__ import annotations

import json
import random
import re
from typing import Any
from urllib.parse import parse_qsl

from tests.fakes.base import (
    FAULT_KINDS,
    FakeServer,
    Reply,
    RequestRecord,
    json_reply,
    truncated_json_reply,
)
from tests.fakes.world import FakeWorld

CHECK_USD = 0.008
CHECK_MICROS = 8_000
RESULTS = ("valid", "invalid", "disposable", "catchall", "unknown")
_PATH = re.compile(r"^/v4(?:\.\d+)?/single/check/?$")
_ROLE_ACCOUNTS = frozenset({"info", "hello", "contact", "office", "sales", "support", "admin"})
_FREE_HOSTS = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "aol.com"})
_MESSAGES = {
    "auth_failure": "The key provided is invalid",
    "throttle_triggered": (
        "Too many requests in a short amount of time. Please try again shortly or adjust "
        "your rate limit settings for this application in the dashboard."
    ),
    "temp_unavail": "The service is temporarily unavailable. Please try again later.",
    "general_failure": "Something went wrong while processing your request.",
    "bad_referrer": "The referrer for this request is not trusted.",
    "credits": "Insufficient credit balance. Purchase credits or add a default payment method.",
}


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


class FakeNeverBounce(FakeServer):
    """Fake ``api.neverbounce.com``; see the module docstring."""

    name = "neverbounce"
    key_prefix = "nb"
    fault_kinds = FAULT_KINDS | {"temp_unavail", "general_failure", "bad_referrer"}

    def __init__(
        self,
        world: FakeWorld,
        api_key: str | None = None,
        *,
        credits: int = 1_000_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(api_key, **kwargs)
        self.world = world
        self.credits_remaining = credits  # reported in credits_info; never refuses checks
        self._rng = random.Random(7)

    def _status(self, status: str, message: str | None = None) -> Reply:
        payload = {
            "status": status,
            "message": message or _MESSAGES[status],
            "execution_time": self._rng.randint(4, 40),
        }
        return json_reply(200, payload)

    def handle(self, req: RequestRecord) -> Reply:
        if not _PATH.match(req.path) or req.method not in ("GET", "POST"):
            return json_reply(404, {"status": "general_failure", "message": "Not Found"})
        params = dict(req.query)
        if req.method == "POST" and req.body:
            params.update(self._form(req))
        key, email = params.get("key", ""), str(params.get("email", "")).strip()
        if not key:
            return self._status("general_failure", "Missing required parameter 'key'")
        if key != self.api_key:
            return self._status("auth_failure")
        if not email:
            return self._status("general_failure", "Missing required parameter 'email'")
        result = self.world.neverbounce_result(email)
        local, _, host = email.lower().rpartition("@")
        if result == "invalid" and not (local and "." in host):
            flags = ["bad_syntax"]
        else:
            flags = ["has_dns", "has_dns_mx"]
            flags += {"valid": ["smtp_connectable"], "disposable": ["disposable_email"]}.get(
                result, []
            )
            flags += ["role_account"] if local in _ROLE_ACCOUNTS else []
            flags += ["free_email_host"] if host in _FREE_HOSTS else []
        answer: dict[str, Any] = {
            "status": "success",
            "result": result,
            "flags": flags,
            "suggested_correction": "",
            "retry_token": "",
        }
        with self._lock:
            self.credits_remaining -= 1
            remaining = self.credits_remaining
        if _truthy(params.get("address_info", "0")):
            domain, _, tld = host.rpartition(".")
            answer["address_info"] = {
                "original_email": email,
                "normalized_email": email.lower(),
                "addr": local,
                "alias": "",
                "host": host,
                "fqdn": host,
                "domain": domain,
                "subdomain": "",
                "tld": tld,
            }
        if _truthy(params.get("credits_info", "0")):
            answer["credits_info"] = {
                "paid_credits_used": 1,
                "free_credits_used": 0,
                "paid_credits_remaining": remaining,
                "free_credits_remaining": 0,
            }
        answer["execution_time"] = self._rng.randint(120, 900)
        job = self.world.job_of_email(email)
        self.bill("single_check", CHECK_MICROS, job, f"single_check:{email.lower()}")
        return json_reply(200, answer)

    def job_of_request(self, req: RequestRecord) -> str:
        params = dict(req.query)
        if req.method == "POST" and req.body:
            params.update(self._form(req))
        email = str(params.get("email", "")).strip()
        return self.world.job_of_email(email) if email else ""

    @staticmethod
    def _form(req: RequestRecord) -> dict[str, str]:
        if "json" in req.header("Content-Type"):
            try:
                body = json.loads(req.body)
            except ValueError:
                return {}
            return {k: str(v) for k, v in body.items()} if isinstance(body, dict) else {}
        return dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))

    def fault_reply(self, kind: str, req: RequestRecord) -> Reply:
        if kind == "rate_limit":
            return self._status("throttle_triggered")
        if kind == "bad_key":
            return self._status("auth_failure")
        if kind == "credits_exhausted":
            return self._status("general_failure", _MESSAGES["credits"])
        if kind in ("temp_unavail", "general_failure", "bad_referrer"):
            return self._status(kind)
        if kind == "server_error":
            payload = {"status": "temp_unavail", "message": _MESSAGES["temp_unavail"]}
            return json_reply(503, payload)
        return truncated_json_reply({"status": "success", "result": "valid", "flags": []})
