"""Google Places API (New): Text Search with the details in it, Place Details as a fallback.

Wire format (read 2026-11-23):

- Text Search (New), https://developers.google.com/maps/documentation/places/web-service/text-search:
  ``POST /v1/places:searchText`` with headers ``X-Goog-Api-Key`` and ``X-Goog-FieldMask``
  (required, no default; paths start with ``places.``, and ``nextPageToken`` comes back
  only when it is in the mask); body ``textQuery``, ``pageSize`` (1-20) and ``pageToken``
  for the next page, every other parameter the same as on the first call; at most 60
  places over all pages.
- Place Details (New), https://developers.google.com/maps/documentation/places/web-service/place-details:
  ``GET /v1/places/{id}`` with the same headers, the mask without the ``places.`` prefix.
- Errors, https://cloud.google.com/apis/design/errors: the ``google.rpc.Status`` envelope
  ``{"error": {"code", "message", "status", "details"}}``. 429 RESOURCE_EXHAUSTED (quota per
  minute, per method, per project) is a rate limit: every worker backs off, for the
  ``Retry-After`` header or a ``google.rpc.RetryInfo`` detail when present, except that an
  exhausted per-day quota (ErrorInfo ``quota_limit`` ``...PerDay...``) is permanent; 400
  INVALID_ARGUMENT, 401, 403 PERMISSION_DENIED and 404 are permanent; 5xx are transient.

Cost model, https://developers.google.com/maps/documentation/places/web-service/usage-and-billing:
a request is billed once, at the highest SKU any field of its mask touches. ``displayName``,
``formattedAddress``, ``addressComponents``, ``types`` and ``businessStatus`` are Pro;
``websiteUri``, the phone numbers, ``rating`` and ``userRatingCount`` are Enterprise;
``id`` and ``nextPageToken`` are Essentials. Scoring needs the Enterprise fields, so

- Pro search + Enterprise Details per place: $0.032 per page + $0.020 per place, i.e.
  $0.432 for a page of 20 places;
- Enterprise search (:data:`SEARCH_FIELD_MASK`): $0.035 per page of up to 20 places.

This adapter takes the second: one search page carries every detail, and
:meth:`GooglePlaces.details` serves the places it has seen from a bounded in-process LRU
with no call and no charge. Only a place the process has not seen (evicted, or found by
another process) costs a Place Details (Enterprise) call. Prices come from settings
(``PRICE_GOOGLE_TEXT_SEARCH``, ``PRICE_GOOGLE_PLACE_DETAILS``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import httpx

from services.common.errors import ProviderError
from services.common.providers.base import (
    Charge,
    DetailsResult,
    PlaceDetails,
    PlaceSummary,
    RateLimiter,
    SearchPage,
)
from services.common.providers.http import (
    HttpProvider,
    Outcome,
    RetryPolicy,
    json_object,
    ok,
    permanent,
    rate_limited,
    retry,
    retry_after_s,
)
from services.common.settings import Settings

PROVIDER = "google_places"
MAX_RESULTS = 60  # Text Search returns at most 60 places over all pages
MAX_PAGE_SIZE = 20
CACHE_SIZE = 10_000  # places kept for details(); about 1 KB each

log = logging.getLogger(__name__)

# Every field scoring reads; Enterprise SKU (websiteUri, phones, rating, userRatingCount).
PLACE_FIELDS = (
    "id",
    "displayName",
    "formattedAddress",
    "addressComponents",
    "types",
    "businessStatus",
    "websiteUri",
    "nationalPhoneNumber",
    "internationalPhoneNumber",
    "rating",
    "userRatingCount",
)
SEARCH_FIELD_MASK = ",".join([*(f"places.{f}" for f in PLACE_FIELDS), "nextPageToken"])
DETAILS_FIELD_MASK = ",".join(PLACE_FIELDS)
# An address is complete when it names all of these (Place.addressComponents[].types).
COMPLETE_ADDRESS = frozenset(
    {"street_number", "route", "locality", "administrative_area_level_1", "postal_code"}
)


def _duration_s(value: object) -> float | None:
    """A protobuf JSON Duration ("1.5s") in seconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return max(0.0, float(value[:-1]))
        except ValueError:
            return None
    return None


def _key_refused(code: int, error: dict[str, Any]) -> bool:
    """Whether an error answer says the API key is wrong (400 API_KEY_INVALID) or not
    allowed (401, 403)."""
    if code in (401, 403):
        return True
    details = error.get("details") or ()
    return any(
        isinstance(d, dict) and str(d.get("reason", "")).startswith("API_KEY_") for d in details
    )


def _error_outcome(response: httpx.Response) -> Outcome[Any]:
    """The meaning of a non-2xx answer, from its status and google.rpc.Status envelope."""
    code = response.status_code
    try:
        error = json_object(response).get("error")
        error = error if isinstance(error, dict) else {}
    except ValueError:
        error = {}
    status = str(error.get("status") or f"HTTP {code}")
    message = str(error.get("message") or response.reason_phrase or "")
    cause = f"{status} ({code}): {message}" if message else f"{status} ({code})"
    if code == 429:
        wait = retry_after_s(response)
        for detail in error.get("details") or ():
            kind = str(detail.get("@type", "")) if isinstance(detail, dict) else ""
            if kind.endswith("RetryInfo") and wait is None:
                wait = _duration_s(detail.get("retryDelay"))
            elif kind.endswith("ErrorInfo"):
                limit = str((detail.get("metadata") or {}).get("quota_limit", ""))
                if "perday" in limit.lower():  # resets at midnight: retrying cannot help
                    return permanent(f"daily quota exhausted: {cause}", kind="credits_exhausted")
        return rate_limited(cause, wait)
    if code >= 500 or code == 408:
        return retry(cause, retry_after_s(response))
    if code >= 400:  # 400 INVALID_ARGUMENT, 401, 403 PERMISSION_DENIED, 404 NOT_FOUND, ...
        return permanent(cause, kind="auth_error" if _key_refused(code, error) else "")
    return retry(f"unexpected answer (HTTP {code})")


def _place_details(place: dict[str, Any]) -> PlaceDetails:
    """A Place resource as :class:`PlaceDetails`; KeyError/TypeError when it is malformed."""
    place_id = place["id"]
    if not isinstance(place_id, str) or not place_id:
        raise TypeError("place without an id")
    component_types = {
        kind for component in place.get("addressComponents") or () for kind in component["types"]
    }
    display_name = place.get("displayName") or {}
    return PlaceDetails(
        place_id=place_id,
        name=str(display_name.get("text", "")),
        address=str(place.get("formattedAddress", "")),
        phone=str(place.get("nationalPhoneNumber") or place.get("internationalPhoneNumber") or ""),
        website=str(place.get("websiteUri", "")),
        rating=float(place.get("rating") or 0.0),
        review_count=int(place.get("userRatingCount") or 0),
        business_status=str(place.get("businessStatus", "")),  # "" when Google does not say
        types=tuple(str(t) for t in place.get("types") or ()),
        address_complete=COMPLETE_ADDRESS <= component_types,
    )


def _classify_search(response: httpx.Response) -> Outcome[tuple[list[PlaceDetails], str]]:
    if not response.is_success:
        return _error_outcome(response)
    body = json_object(response)
    places = [_place_details(p) for p in body.get("places") or ()]
    token = body.get("nextPageToken") or ""
    if not isinstance(token, str):
        raise TypeError("nextPageToken is not a string")
    return ok((places, token))


def _classify_details(response: httpx.Response) -> Outcome[PlaceDetails]:
    if not response.is_success:
        return _error_outcome(response)
    return ok(_place_details(json_object(response)))


class GooglePlaces(HttpProvider):
    """:class:`~services.common.providers.base.PlaceSearch` over Google Places API (New)."""

    name = PROVIDER
    key_setting = "google_places_api_key"
    base_url_setting = "google_places_base_url"
    page_size: int = MAX_PAGE_SIZE  # most places one billed search page returns

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        limiter: RateLimiter,
        *,
        retry_policy: RetryPolicy | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        super().__init__(client, settings, limiter, retry_policy=retry_policy)
        self._seen: OrderedDict[str, PlaceDetails] = OrderedDict()
        self._cache_size = max(0, cache_size)

    def price(self, operation: str) -> float:
        """List price of one ``text_search`` page or ``place_details`` call (0.0 otherwise)."""
        return {
            "text_search": self._settings.price_google_text_search,
            "place_details": self._settings.price_google_place_details,
        }.get(operation, 0.0)

    def details_price(self, place_id: str) -> float:
        """What :meth:`details` of ``place_id`` will cost: 0 for a place a search returned."""
        return 0.0 if place_id in self._seen else self._settings.price_google_place_details

    def _headers(self, field_mask: str) -> dict[str, str]:
        return {"X-Goog-Api-Key": self._key, "X-Goog-FieldMask": field_mask}

    def _remember(self, details: PlaceDetails) -> None:
        self._seen[details.place_id] = details
        self._seen.move_to_end(details.place_id)
        while len(self._seen) > self._cache_size:
            self._seen.popitem(last=False)

    async def search(self, business_type: str, location: str, limit: int) -> SearchPage:
        """Up to ``limit`` (at most 60) places for "``business_type`` in ``location``".

        Pages of ``min(20, limit)`` places (the same size on every page, as Google requires)
        until ``limit`` places or the last page; one ``text_search`` charge per page
        returned. A failure after the first page ends the search with the places already
        paid for (logged), so the charges still match the bill.
        """
        limit = min(max(limit, 0), MAX_RESULTS)
        if limit == 0:
            return SearchPage(places=[])
        page_size = min(MAX_PAGE_SIZE, limit)
        query = f"{business_type} in {location}"
        url = f"{self._url}/v1/places:searchText"
        headers = self._headers(SEARCH_FIELD_MASK)
        places: dict[str, PlaceSummary] = {}
        charges: list[Charge] = []
        token = ""
        for _ in range(math.ceil(MAX_RESULTS / page_size)):
            body: dict[str, object] = {"textQuery": query, "pageSize": page_size}
            if token:
                body["pageToken"] = token

            def build(body: dict[str, object] = body) -> httpx.Request:
                return self._client.build_request("POST", url, json=body, headers=headers)

            try:
                (found, token), page_charges = await self._paid(
                    "text_search", self._settings.price_google_text_search, build, _classify_search
                )
            except ProviderError as exc:
                if not charges:
                    raise
                log.warning("search stopped after %d pages: %s", len(charges), exc)
                break
            charges += page_charges
            for details in found:
                self._remember(details)
                places.setdefault(
                    details.place_id,
                    PlaceSummary(details.place_id, details.name, details.address, details.types),
                )
            if len(places) >= limit or not token or not found:
                break
        return SearchPage(places=list(places.values())[:limit], charges=charges)

    async def details(self, place_id: str) -> DetailsResult:
        """Details of a place: free from the search that found it, else one Place Details
        (Enterprise) call and one ``place_details`` charge."""
        cached = self._seen.get(place_id)
        if cached is not None:
            self._seen.move_to_end(place_id)
            return DetailsResult(details=cached)
        url = f"{self._url}/v1/places/{quote(place_id, safe='')}"
        headers = self._headers(DETAILS_FIELD_MASK)

        def build() -> httpx.Request:
            return self._client.build_request("GET", url, headers=headers)

        price = self._settings.price_google_place_details
        details, charges = await self._paid("place_details", price, build, _classify_details)
        self._remember(details)
        return DetailsResult(details=details, charges=charges)
