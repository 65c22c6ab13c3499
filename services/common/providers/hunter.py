"""Hunter.io v2 Domain Search: the best contact address of a business's domain.

Wire format (read 2026-11-23 from https://hunter.io/api-documentation/v2):

- ``GET /v2/domain-search?domain=...&limit=10`` with the key in the ``X-API-KEY`` header
  (Hunter also takes an ``api_key`` query parameter; a header keeps it out of URLs and
  logs). The answer's ``data.emails[]`` carry ``value``, ``type`` (``personal`` or
  ``generic``), ``confidence`` (0-100), ``first_name``, ``last_name``, ``position`` and
  ``verification.status``.
- Errors are ``{"errors": [{"id", "code", "details"}]}``. Hunter's statuses are its own:
  **403 is the rate limit** (15 requests/s, 500/min for search): retried, every worker backs
  off; **429 means the account's credits are used up**: permanent; 401 is a bad key and
  400/422 a bad request: permanent; 451 means the people of the domain asked to be erased:
  no result, no charge; 5xx are transient.

Credits (https://help.hunter.io/en/articles/1911617-hunter-s-credit-system): a domain search
costs one credit per 1-10 addresses returned, and nothing when it finds none. This adapter
asks for at most 10, so a search that finds anything costs one credit
(``PRICE_HUNTER_DOMAIN_SEARCH``). Hunter does not count a repeated search of the same domain
in a billing period again; prospect's enrichment cache avoids repeats, and a repeat it does
make is charged here as the most it can cost.

The best address (:func:`best_email`): addresses Hunter's own verification calls
``invalid`` are dropped; of the rest, the highest confidence wins; on a tie a ``generic``
address (info@, contact@) beats a personal one, since it reaches the business rather than
one person, then a verified ``valid`` one beats the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from services.common.providers.base import EmailCandidate
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

PROVIDER = "hunter"
EMAILS_PER_CREDIT = 10
SEARCH_LIMIT = 10  # addresses asked for: one credit at most


@dataclass(frozen=True, slots=True)
class FoundEmail:
    """One address of a Domain Search answer."""

    value: str
    type: str  # "personal" or "generic"
    confidence: int
    verification: str  # Hunter's verification.status, "" when absent


def best_email(emails: list[FoundEmail]) -> FoundEmail | None:
    """The address to contact the business at (see the module docstring), or None."""
    usable = [e for e in emails if e.value and e.verification != "invalid"]
    if not usable:
        return None
    return max(usable, key=lambda e: (e.confidence, e.type == "generic", e.verification == "valid"))


def _found(entry: dict[str, Any]) -> FoundEmail:
    verification = entry.get("verification") or {}
    return FoundEmail(
        value=str(entry.get("value") or "").strip().lower(),
        type=str(entry.get("type") or ""),
        confidence=int(entry.get("confidence") or 0),
        verification=str(verification.get("status") or ""),
    )


def _error_details(response: httpx.Response) -> str:
    """The first error's details of Hunter's envelope as ": details", or "" if none."""
    try:
        errors = json_object(response).get("errors")
        first = errors[0] if isinstance(errors, list) and errors else {}
        details = first.get("details") if isinstance(first, dict) else None
    except ValueError:
        details = None
    return f": {details}" if details else ""


def _classify(response: httpx.Response) -> Outcome[list[FoundEmail]]:
    code = response.status_code
    if response.is_success:
        emails = json_object(response)["data"].get("emails") or []
        if not isinstance(emails, list):
            raise TypeError("data.emails is not a list")
        return ok([_found(e) for e in emails])
    if code == 451:  # the domain's people asked to be erased: nothing to return or bill
        return ok([])
    details = _error_details(response)
    if code == 401:
        return permanent(f"invalid API key (401){details}", kind="auth_error")
    if code == 403:
        return rate_limited(f"rate limit reached (403){details}", retry_after_s(response))
    if code == 429:
        return permanent(f"account credits exhausted (429){details}", kind="credits_exhausted")
    if code in (400, 422):
        return permanent(f"bad request ({code}){details}")
    if code >= 500 or code == 408:
        return retry(f"server error ({code}){details}", retry_after_s(response))
    if code >= 400:
        return permanent(f"unexpected answer ({code}){details}")
    return retry(f"unexpected answer (HTTP {code})")


class Hunter(HttpProvider):
    """:class:`~services.common.providers.base.EmailFinder` over Hunter.io Domain Search."""

    name = PROVIDER
    key_setting = "hunter_api_key"
    base_url_setting = "hunter_base_url"
    path = "/v2/domain-search"

    def price(self, operation: str) -> float:
        """The most one ``email_search`` can cost: one credit (0.0 for other operations)."""
        return self._settings.price_hunter_domain_search if operation == "email_search" else 0.0

    async def find_email(self, domain: str, company: str) -> EmailCandidate:
        """The best address at ``domain`` (``company`` is not needed when the domain is
        known), or "" when Hunter has none. Charged one credit per 10 addresses returned;
        a search that returns none is free, and an empty domain makes no call."""
        domain = domain.strip().lower()
        if not domain:
            return EmailCandidate(email="", confidence=0)
        params = {"domain": domain, "limit": str(SEARCH_LIMIT)}
        headers = {"X-API-KEY": self._key}

        def build() -> httpx.Request:
            return self._client.build_request("GET", self._url, params=params, headers=headers)

        price = self._settings.price_hunter_domain_search

        def billed(emails: list[Any]) -> float:
            return math.ceil(len(emails) / EMAILS_PER_CREDIT) * price

        emails, charges = await self._paid("domain_search", price, build, _classify, billed)
        best = best_email(emails)
        if best is None:
            return EmailCandidate(email="", confidence=0, charges=charges)
        return EmailCandidate(email=best.value, confidence=best.confidence, charges=charges)
