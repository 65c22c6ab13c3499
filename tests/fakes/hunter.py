"""A fake Hunter.io API v2: Domain Search and Email Finder over real HTTP.

Wire format, from https://hunter.io/api-documentation/v2 (#domain-search, #email-finder,
#authentication, #errors, #rate-limiting) and real answers quoted in public issues:

- The key comes as the ``api_key`` query parameter, an ``X-API-KEY`` header or
  ``Authorization: Bearer <key>``.
- ``GET /v2/domain-search?domain=`` (or ``company=``), optional ``limit`` (default 10, at
  most 100), ``offset``, ``type`` (personal|generic), ``seniority``, ``department``:
  ``{"data": {"domain", "disposable", "webmail", "accept_all", "pattern", "organization",
  ..., "emails": [{"value", "type", "confidence", "first_name", "last_name", "position",
  "seniority", "department", "linkedin", "twitter", "phone_number", "verification":
  {"date", "status"}, "sources": [...]}]}, "meta": {"results", "limit", "offset",
  "params"}}``. An unknown domain is a 200 with no emails.
- ``GET /v2/email-finder?domain=&first_name=&last_name=`` (or ``full_name``): ``{"data":
  {"first_name", "last_name", "email", "score", "domain", "accept_all", "position", ...,
  "verification"}, "meta": {"params"}}``; ``email`` and ``score`` are null when nothing
  is found.
- Errors are ``{"errors": [{"id", "code", "details"}]}``: 400 ``wrong_params`` (e.g. "You
  are missing the domain parameter"); 401 ``authentication_failed`` ("No user found for
  the API key supplied"); **403 when the rate limit is reached** (15 requests/s and 500/min
  for these two endpoints: slow down and retry; Hunter documents no Retry-After header);
  **429 when the plan's usage is exhausted**, body id ``too_many_requests`` with "You've
  reached the limit for the number of searches per billing period included in your plan."
  (a real answer, github.com/bhavsec/reconspider/issues/59): retrying cannot help. The id
  in the 403 body is not documented; this fake sends ``too_many_requests`` there too, so
  adapters must branch on the HTTP status, as Hunter's own docs say to.

Billing (https://hunter.io/pricing, "failed lookups are free"): Domain Search costs 1
credit per 10 emails returned, rounded up, and nothing when none is returned; Email Finder
costs 1 credit when it finds an address. A credit is priced at the Starter plan's
$49 / 2,000 credits = $0.0245.
"""

from __future__ import annotations

import math
from typing import Any

from tests.fakes.base import FakeServer, Reply, RequestRecord, json_reply, truncated_json_reply
from tests.fakes.world import FakeWorld, normalize_domain

CREDIT_USD = 0.0245  # Starter: $49 / 2,000 credits
CREDIT_MICROS = 24_500
EMAILS_PER_CREDIT = 10
MAX_LIMIT = 100
DOMAIN_SEARCH_PATH = "/v2/domain-search"
EMAIL_FINDER_PATH = "/v2/email-finder"

_RATE_LIMITED = "You have reached the rate limit. Please slow down and try again."
_USAGE_EXHAUSTED = (
    "You've reached the limit for the number of searches per billing period included in your plan."
)


def hunter_error(code: int, error_id: str, details: str) -> Reply:
    return json_reply(code, {"errors": [{"id": error_id, "code": code, "details": details}]})


class _WrongParams(Exception):
    pass


class FakeHunter(FakeServer):
    """Fake ``api.hunter.io``; see the module docstring."""

    name = "hunter"
    key_prefix = "hk"

    def __init__(self, world: FakeWorld, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self.world = world

    def handle(self, req: RequestRecord) -> Reply:
        routes = {DOMAIN_SEARCH_PATH: self._domain_search, EMAIL_FINDER_PATH: self._email_finder}
        route = routes.get(req.path.rstrip("/"))
        if route is None or req.method != "GET":
            return hunter_error(404, "not_found", "The requested resource couldn't be found.")
        bearer = req.header("Authorization")
        key = (
            req.query.get("api_key")
            or req.header("X-API-KEY")
            or (bearer[7:].strip() if bearer.lower().startswith("bearer ") else "")
        )
        if key != self.api_key:
            return self._auth_failed()
        try:
            return route(req)
        except _WrongParams as exc:
            return hunter_error(400, "wrong_params", str(exc))

    def job_of_request(self, req: RequestRecord) -> str:
        domain = normalize_domain(req.query.get("domain", ""))
        if not domain and req.query.get("company"):
            domain = self.world.domain_of_company(req.query["company"])
        return self.world.job_of_domain(domain) if domain else ""

    # -- endpoints -------------------------------------------------------------------------

    def _company_domain(self, req: RequestRecord) -> tuple[str, str | None]:
        domain = normalize_domain(req.query.get("domain", ""))
        company = req.query.get("company") or None
        if not domain and company:
            domain = self.world.domain_of_company(company)
        if not domain and not company:
            raise _WrongParams("You are missing the domain parameter")
        return domain, company

    def _domain_search(self, req: RequestRecord) -> Reply:
        domain, company = self._company_domain(req)
        try:
            limit = int(req.query.get("limit") or 10)
            offset = int(req.query.get("offset") or 0)
        except ValueError:
            raise _WrongParams("The limit and offset parameters must be integers") from None
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            return hunter_error(400, "pagination_error", "The limit or offset is invalid")
        kind = req.query.get("type") or None
        if kind not in (None, "personal", "generic"):
            raise _WrongParams("The type parameter must be personal or generic")
        filters = {k: req.query.get(k) or None for k in ("seniority", "department")}
        info = self.world.domain_info(domain) if domain else None
        emails = [
            e
            for e in (info["emails"] if info else [])
            if (kind is None or e["type"] == kind)
            and all(v is None or e[k] == v for k, v in filters.items())
        ]
        page = emails[offset : offset + limit]
        data = {
            "domain": domain or None,
            "disposable": False,
            "webmail": False,
            "accept_all": bool(info and info["accept_all"]),
            "pattern": info["pattern"] if info else None,
            "organization": info["organization"] if info else None,
            "description": None,
            "industry": None,
            "twitter": None,
            "facebook": None,
            "linkedin": None,
            "instagram": None,
            "youtube": None,
            "technologies": [],
            "country": "US" if info else None,
            "state": info["state"] if info else None,
            "city": info["city"] if info else None,
            "postal_code": info["postal_code"] if info else None,
            "street": info["street"] if info else None,
            "headcount": "1-10" if info else None,
            "company_type": "privately held" if info else None,
            "emails": page,
            "linked_domains": [],
        }
        meta = {
            "results": len(emails),
            "limit": limit,
            "offset": offset,
            "params": {"domain": domain or None, "company": company, "type": kind, **filters},
        }
        credits = math.ceil(len(page) / EMAILS_PER_CREDIT)
        job = self.world.job_of_domain(domain)
        self.bill("domain_search", credits * CREDIT_MICROS, job, f"domain_search:{domain}")
        return json_reply(200, {"data": data, "meta": meta})

    def _email_finder(self, req: RequestRecord) -> Reply:
        domain, company = self._company_domain(req)
        first, last = req.query.get("first_name", ""), req.query.get("last_name", "")
        full = req.query.get("full_name", "")
        if full and not (first and last):
            first, _, last = full.strip().partition(" ")
        if not (first and last):
            raise _WrongParams(
                "You are missing the first_name and last_name or full_name parameter"
            )
        info = self.world.domain_info(domain) if domain else None
        hit = next(
            (
                e
                for e in (info["emails"] if info else [])
                if e["type"] == "personal"
                and (e["first_name"] or "").lower() == first.strip().lower()
                and (e["last_name"] or "").lower() == last.strip().lower()
            ),
            None,
        )
        data = {
            "first_name": first,
            "last_name": last,
            "email": hit["value"] if hit else None,
            "score": hit["confidence"] if hit else None,
            "domain": domain or None,
            "accept_all": bool(info and info["accept_all"]),
            "position": hit["position"] if hit else None,
            "twitter": None,
            "linkedin_url": hit["linkedin"] if hit else None,
            "phone_number": None,
            "company": info["organization"] if info else company,
            "sources": hit["sources"] if hit else [],
            "verification": hit["verification"] if hit else {"date": None, "status": None},
        }
        params = {
            "first_name": req.query.get("first_name") or None,
            "last_name": req.query.get("last_name") or None,
            "full_name": full or None,
            "domain": domain or None,
            "company": company,
            "max_duration": None,
        }
        job = self.world.job_of_domain(domain)
        subject = f"email_finder:{domain}:{first.lower()} {last.lower()}"
        self.bill("email_finder", CREDIT_MICROS if hit else 0, job, subject)
        return json_reply(200, {"data": data, "meta": {"params": params}})

    # -- errors ----------------------------------------------------------------------------

    @staticmethod
    def _auth_failed() -> Reply:
        return hunter_error(401, "authentication_failed", "No user found for the API key supplied")

    def fault_reply(self, kind: str, req: RequestRecord) -> Reply:
        if kind == "rate_limit":
            return hunter_error(403, "too_many_requests", _RATE_LIMITED)
        if kind == "credits_exhausted":
            return hunter_error(429, "too_many_requests", _USAGE_EXHAUSTED)
        if kind == "server_error":
            return hunter_error(
                503, "service_unavailable", "The service is temporarily unavailable."
            )
        if kind == "bad_key":
            return self._auth_failed()
        return truncated_json_reply({"data": {"domain": "cut-off.com", "emails": []}, "meta": {}})
