"""Google Places API (New) SKUs: which fields each SKU covers, and list prices.

Field-mask billing: "If your field mask includes fields from multiple SKUs, the request is
billed at the highest SKU rate among the requested fields"
(https://developers.google.com/maps/billing-and-pricing/sku-details/places,
https://developers.google.com/maps/documentation/places/web-service/usage-and-billing).
Which field belongs to which SKU: Place Data Fields (New),
https://developers.google.com/maps/documentation/places/web-service/data-fields. The two
methods differ: for Place Details, ``formattedAddress``, ``addressComponents``,
``location``, ``types``, ``viewport`` and ``plusCode`` are *Essentials* and ``photos`` is
*IDs Only*; for Text Search they are all *Pro*. ``*`` selects every field, so it is billed
at Enterprise + Atmosphere.

Prices are USD per request at the first paid volume band (0-100,000 a month), from the
global price list https://developers.google.com/maps/billing-and-pricing/pricing (Text
Search Pro $32, Enterprise $35, Enterprise + Atmosphere $40 per 1,000; Place Details
Essentials $5, Pro $17, Enterprise $20, Enterprise + Atmosphere $25 per 1,000; the IDs Only
SKUs are free and unlimited). Read on 2026-11-23. Monthly free caps are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable

# -- prices (USD per request) ---------------------------------------------------------------

TEXT_SEARCH_IDS_ONLY_USD = 0.0
TEXT_SEARCH_PRO_USD = 0.032
TEXT_SEARCH_ENTERPRISE_USD = 0.035
TEXT_SEARCH_ENTERPRISE_ATMOSPHERE_USD = 0.040
DETAILS_IDS_ONLY_USD = 0.0
DETAILS_ESSENTIALS_USD = 0.005
DETAILS_PRO_USD = 0.017
DETAILS_ENTERPRISE_USD = 0.020
DETAILS_ENTERPRISE_ATMOSPHERE_USD = 0.025

# -- fields per SKU ------------------------------------------------------------------------

_IDS_ONLY = frozenset({"attributions", "id", "name", "movedPlace", "movedPlaceId"})
_LOCATION = frozenset({
    "addressComponents", "addressDescriptor", "adrFormatAddress", "formattedAddress",
    "location", "plusCode", "postalAddress", "shortFormattedAddress", "types", "viewport",
})  # fmt: skip
_PRO = frozenset({
    "accessibilityOptions", "businessStatus", "containingPlaces", "displayName",
    "googleMapsLinks", "googleMapsUri", "iconBackgroundColor", "iconMaskBaseUri",
    "primaryType", "primaryTypeDisplayName", "pureServiceAreaBusiness", "subDestinations",
    "timeZone", "utcOffsetMinutes",
})  # fmt: skip
ENTERPRISE_FIELDS = frozenset({
    "currentOpeningHours", "currentSecondaryOpeningHours", "internationalPhoneNumber",
    "nationalPhoneNumber", "priceLevel", "priceRange", "rating", "regularOpeningHours",
    "regularSecondaryOpeningHours", "userRatingCount", "websiteUri",
})  # fmt: skip
ATMOSPHERE_FIELDS = frozenset({
    "allowsDogs", "curbsidePickup", "delivery", "dineIn", "editorialSummary",
    "evChargeAmenitySummary", "evChargeOptions", "fuelOptions", "generativeSummary",
    "goodForChildren", "goodForGroups", "goodForWatchingSports", "liveMusic", "menuForChildren",
    "neighborhoodSummary", "outdoorSeating", "parkingOptions", "paymentOptions", "reservable",
    "restroom", "reviews", "reviewSummary", "servesBeer", "servesBreakfast", "servesBrunch",
    "servesCocktails", "servesCoffee", "servesDessert", "servesDinner", "servesLunch",
    "servesVegetarianFood", "servesWine", "takeout",
})  # fmt: skip

PLACE_FIELDS = _IDS_ONLY | _LOCATION | {"photos"} | _PRO | ENTERPRISE_FIELDS | ATMOSPHERE_FIELDS

# SKU name -> (fields, price) in ascending price order, per method.
TEXT_SEARCH_SKUS: tuple[tuple[str, frozenset[str], float], ...] = (
    ("Text Search Essentials (IDs Only)", _IDS_ONLY, TEXT_SEARCH_IDS_ONLY_USD),
    ("Text Search Pro", _LOCATION | _PRO | {"photos"}, TEXT_SEARCH_PRO_USD),
    ("Text Search Enterprise", ENTERPRISE_FIELDS, TEXT_SEARCH_ENTERPRISE_USD),
    (
        "Text Search Enterprise + Atmosphere",
        ATMOSPHERE_FIELDS,
        TEXT_SEARCH_ENTERPRISE_ATMOSPHERE_USD,
    ),
)
DETAILS_SKUS: tuple[tuple[str, frozenset[str], float], ...] = (
    ("Place Details Essentials (IDs Only)", _IDS_ONLY | {"photos"}, DETAILS_IDS_ONLY_USD),
    ("Place Details Essentials", _LOCATION, DETAILS_ESSENTIALS_USD),
    ("Place Details Pro", _PRO, DETAILS_PRO_USD),
    ("Place Details Enterprise", ENTERPRISE_FIELDS, DETAILS_ENTERPRISE_USD),
    ("Place Details Enterprise + Atmosphere", ATMOSPHERE_FIELDS, DETAILS_ENTERPRISE_ATMOSPHERE_USD),
)


def sku_for(
    skus: tuple[tuple[str, frozenset[str], float], ...], fields: Iterable[str]
) -> tuple[str, float]:
    """The (SKU name, price) a request for top-level Place ``fields`` is billed at; a ``*``
    among them selects every field. Fields outside every SKU (none, after validation) are
    ignored, so an empty list is billed at the cheapest SKU."""
    wanted = set(fields)
    best = skus[0]
    for sku in skus:
        if "*" in wanted or wanted & sku[1]:
            best = sku
    return best[0], best[2]


def text_search_sku(fields: Iterable[str]) -> tuple[str, float]:
    return sku_for(TEXT_SEARCH_SKUS, fields)


def details_sku(fields: Iterable[str]) -> tuple[str, float]:
    return sku_for(DETAILS_SKUS, fields)
