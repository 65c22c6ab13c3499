"""A fake Google Places API (New): Text Search and Place Details over real HTTP.

Wire format, as documented:

- ``POST /v1/places:searchText`` with a JSON body (``textQuery`` required; ``pageSize``:
  absent or 0 means 20, above 20 is set to 20, negative is INVALID_ARGUMENT; ``pageToken``
  from the previous page, and "all parameters other than pageToken, pageSize and
  maxResultCount ... must match the initial call ... Otherwise an INVALID_ARGUMENT error is
  returned"). https://developers.google.com/maps/documentation/places/web-service/text-search
  and the reference .../reference/rest/v1/places/searchText. At most 60 results in all
  (three pages of 20). Unknown body fields are rejected, as Google's JSON parser does.
- ``GET /v1/places/{id}``: Place Details, field paths *without* the ``places.`` prefix.
  https://developers.google.com/maps/documentation/places/web-service/place-details
- The key comes in ``X-Goog-Api-Key`` (or the ``key`` query parameter); the field mask in
  ``X-Goog-FieldMask`` (or the ``fields`` / ``$fields`` query parameter). "There is no
  default list of returned fields. If you omit this list, the methods return an error":
  https://developers.google.com/maps/documentation/places/web-service/choose-fields.
  ``nextPageToken`` comes back only when it is in the mask; an unknown path is
  INVALID_ARGUMENT ("Cannot find matching fields for path ...").
- Errors are google.rpc.Status envelopes ``{"error": {"code", "message", "status",
  "details"}}`` (https://cloud.google.com/apis/design/errors). A wrong key is
  400 INVALID_ARGUMENT "API key not valid. Please pass a valid API key." with ErrorInfo
  reason ``API_KEY_INVALID`` (what Google's APIs answer, per captured real responses); no
  key at all is 403 PERMISSION_DENIED; over quota is 429 RESOURCE_EXHAUSTED with ErrorInfo
  reason ``RATE_LIMIT_EXCEEDED`` (per-minute quota per method; the per-day quota is the
  "credits_exhausted" fault); an unknown place is 404 NOT_FOUND; an unknown URL is Google's
  HTML 404 page.

Each successful request is billed once at the highest SKU its mask touches (see
:mod:`tests.fakes.google_skus`), attributed to the text query the places belong to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from tests.fakes.base import FakeServer, Reply, RequestRecord, json_reply, truncated_json_reply
from tests.fakes.base import usd_to_micros as _micros
from tests.fakes.google_skus import PLACE_FIELDS, details_sku, text_search_sku
from tests.fakes.world import FakeWorld

SEARCH_PATH = "/v1/places:searchText"
MAX_RESULTS = 60
MAX_PAGE_SIZE = 20
_DETAILS_PATH = re.compile(r"^/v1/places/([A-Za-z0-9_-]+)$")
_REQUEST_FIELDS = frozenset({
    "textQuery", "languageCode", "regionCode", "rankPreference", "includedType", "openNow",
    "minRating", "maxResultCount", "pageSize", "pageToken", "priceLevels",
    "strictTypeFiltering", "locationBias", "locationRestriction", "evOptions",
    "routingParameters", "searchAlongRouteParameters", "includePureServiceAreaBusinesses",
})  # fmt: skip
_PAGING_FIELDS = ("pageToken", "pageSize", "maxResultCount")
_SEARCH_EXTRA = frozenset({"routingSummaries", "contextualContents", "searchUri"})
_SERVICE = "places.googleapis.com"
_NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_NO_MASK = (
    "FieldMask is a required parameter. See https://cloud.google.com/apis/docs/system-parameters "
    "on how to provide it. As an example, you can set the header 'X-Goog-FieldMask' to "
    "'displayName' to ask for the display name and no other fields."
)
_HTML_404 = (
    "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>"
    "<p><b>404.</b> <ins>That's an error.</ins><p>The requested URL <code>{path}</code> was "
    "not found on this server. <ins>That's all we know.</ins>"
)

Tree = dict[str, "Tree | None"]  # a parsed field mask; None means "the whole value"


class _Invalid(Exception):
    """A 400 INVALID_ARGUMENT with this message."""


def google_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return json_reply(code, {"error": error})


def _error_info(reason: str, **metadata: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": _SERVICE, **metadata},
    }


def _mask_paths(req: RequestRecord) -> list[str]:
    raw = req.header("X-Goog-FieldMask") or req.query.get("fields") or req.query.get("$fields", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _add(tree: Tree, parts: list[str]) -> None:
    head = parts[0]
    if len(parts) == 1 or parts[1] == "*":
        tree[head] = None
        return
    sub = tree.setdefault(head, {})
    if sub is not None:
        _add(sub, parts[1:])


def _project(value: Any, tree: Tree | None) -> Any:
    if tree is None:
        return value
    if isinstance(value, list):
        return [_project(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: _project(value[k], sub) for k, sub in tree.items() if k in value}
    return value


def _place_tree(paths: list[str], prefix: str = "") -> Tree:
    """Field paths relative to a Place (no ``places.`` prefix) as a tree; validates them."""
    tree: Tree = {}
    for path in paths:
        if path == "*":
            return dict.fromkeys(PLACE_FIELDS)
        if path.split(".")[0] not in PLACE_FIELDS:
            raise _Invalid(
                "Error expanding 'fields' parameter. Cannot find matching fields for path "
                f"'{prefix}{path}'."
            )
        _add(tree, path.split("."))
    return tree


class FakeGooglePlaces(FakeServer):
    """Fake ``places.googleapis.com``; see the module docstring."""

    name = "google_places"
    key_prefix = "gk"

    def __init__(self, world: FakeWorld, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self.world = world

    # -- routing ---------------------------------------------------------------------------

    def handle(self, req: RequestRecord) -> Reply:
        match = _DETAILS_PATH.match(req.path)
        if req.path == SEARCH_PATH and req.method == "POST":
            route = self._search
        elif match and req.method == "GET":
            route = self._details
        else:
            body = _HTML_404.format(path=req.path).encode()
            return Reply(404, body, {"Content-Type": "text/html; charset=UTF-8"})
        key = req.header("X-Goog-Api-Key") or req.query.get("key", "")
        if not key:
            return google_error(403, "PERMISSION_DENIED", _NO_KEY)
        if key != self.api_key:
            return self._bad_key()
        paths = _mask_paths(req)
        if not paths:
            return google_error(400, "INVALID_ARGUMENT", _NO_MASK)
        try:
            return route(req, paths)
        except _Invalid as exc:
            return google_error(400, "INVALID_ARGUMENT", str(exc))

    def job_of_request(self, req: RequestRecord) -> str:
        match = _DETAILS_PATH.match(req.path)
        if match:
            return self.world.job_of_place(match.group(1))
        if req.path != SEARCH_PATH:
            return ""
        try:
            query = json.loads(req.body or b"{}").get("textQuery", "")
        except (ValueError, AttributeError):
            return ""
        return query if isinstance(query, str) else ""

    # -- Text Search -----------------------------------------------------------------------

    def _search(self, req: RequestRecord, paths: list[str]) -> Reply:
        body = self._body(req)
        query = body.get("textQuery")
        if not isinstance(query, str) or not query.strip():
            raise _Invalid("Invalid 'textQuery': the text query must not be empty.")
        size = body.get("pageSize") or body.get("maxResultCount") or MAX_PAGE_SIZE
        if not isinstance(size, int) or size < 0:
            raise _Invalid(f"Invalid value for 'pageSize': {size!r}.")
        size = min(size, MAX_PAGE_SIZE)
        want_token, place_paths = False, []
        for path in paths:
            if path == "*":
                want_token, place_paths = True, ["*"]
            elif path == "nextPageToken":
                want_token = True
            elif path in ("places", "places.*"):
                place_paths.append("*")
            elif path.startswith("places."):
                place_paths.append(path.removeprefix("places."))
            elif path not in _SEARCH_EXTRA:
                raise _Invalid(
                    "Error expanding 'fields' parameter. Cannot find matching fields for path "
                    f"'{path}'."
                )
        tree = _place_tree(place_paths, "places.")
        fields = {"*"} if "*" in place_paths else set(tree)
        signature = hashlib.sha256(
            json.dumps({k: v for k, v in body.items() if k not in _PAGING_FIELDS}, sort_keys=True)
            .encode()
        ).hexdigest()[:24]  # fmt: skip
        offset = self._offset(body.get("pageToken"), signature)
        places = self.world.places_for(query)[:MAX_RESULTS]
        page = places[offset : offset + size]
        answer: dict[str, Any] = {}
        if page and tree:
            answer["places"] = [_project(p, tree) for p in page]
        if want_token and offset + size < len(places):
            token = json.dumps({"o": offset + size, "s": signature}).encode()
            answer["nextPageToken"] = base64.urlsafe_b64encode(token).decode().rstrip("=")
        _, price = text_search_sku(fields)
        self.bill("text_search", _micros(price), query, f"text_search:{query}@{offset}")
        return json_reply(200, answer)

    @staticmethod
    def _body(req: RequestRecord) -> dict[str, Any]:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            raise _Invalid("Invalid JSON payload received. Unexpected token.") from None
        if not isinstance(body, dict):
            raise _Invalid("Invalid JSON payload received. Expected an object.")
        for name in body:
            if name not in _REQUEST_FIELDS:
                raise _Invalid(
                    f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
                )
        return body

    @staticmethod
    def _offset(token: Any, signature: str) -> int:
        if token in (None, ""):
            return 0
        try:
            padded = str(token) + "=" * (-len(str(token)) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded))
            offset, issued_for = int(data["o"]), str(data["s"])
        except (ValueError, KeyError, TypeError):
            raise _Invalid("Invalid page token.") from None
        if issued_for != signature:
            raise _Invalid(
                "When paginating, all parameters other than pageToken, pageSize and "
                "maxResultCount must match the initial request that returned the page token."
            )
        return offset

    # -- Place Details ---------------------------------------------------------------------

    def _details(self, req: RequestRecord, paths: list[str]) -> Reply:
        match = _DETAILS_PATH.match(req.path)
        assert match is not None
        place_id = match.group(1)
        tree = _place_tree(paths)
        place = self.world.place(place_id)
        if place is None:
            return google_error(404, "NOT_FOUND", "Requested entity was not found.")
        _, price = details_sku({"*"} if "*" in paths else set(tree))
        job = self.world.job_of_place(place_id)
        self.bill("place_details", _micros(price), job, f"place_details:{place_id}")
        return json_reply(200, _project(place, tree))

    # -- errors ----------------------------------------------------------------------------

    def _bad_key(self) -> Reply:
        message = "API key not valid. Please pass a valid API key."
        return google_error(400, "INVALID_ARGUMENT", message, [
            _error_info("API_KEY_INVALID"),
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": message},
        ])  # fmt: skip

    def fault_reply(self, kind: str, req: RequestRecord) -> Reply:
        method = "SearchText" if req.path == SEARCH_PATH else "GetPlace"
        if kind in ("rate_limit", "credits_exhausted"):
            period = "minute" if kind == "rate_limit" else "day"
            limit = f"{method}RequestsPer{period.title()}PerProject"
            message = (
                f"Quota exceeded for quota metric '{method} requests' and limit '{method} "
                f"requests per {period}' of service '{_SERVICE}' for consumer "
                "'project_number:123456789012'."
            )
            info = _error_info(
                "RATE_LIMIT_EXCEEDED",
                quota_metric=f"{_SERVICE}/{method.lower()}_requests",
                quota_limit=limit,
                quota_limit_value="600" if period == "minute" else "1000",
                quota_location="global",
                consumer="projects/123456789012",
            )
            help_link = {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Request a higher quota limit.",
                           "url": "https://cloud.google.com/docs/quotas/help/request_increase"}],
            }  # fmt: skip
            return google_error(429, "RESOURCE_EXHAUSTED", message, [info, help_link])
        if kind == "server_error":
            return google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
        if kind == "bad_key":
            return self._bad_key()
        place = {"id": "ChIJ" + "x" * 23, "displayName": {"text": "Cut Off", "languageCode": "en"}}
        return truncated_json_reply({"places": [place] * 3, "nextPageToken": "A" * 40})
