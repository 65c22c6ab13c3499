"""Lead scoring: how promising a discovered place is, as a whole number from 0 to 100.

Weights (a place with everything scores exactly 100):

==================  ======  ==========================================================
signal              points  rule
==================  ======  ==========================================================
website             25      any website
phone               20      any phone number
complete address    15      ``address_complete`` (number, street, city, region, postal)
rating              12      linear from 3.0 (0 points) to 5.0 (12); unrated (0.0) is 0
review count        8       ``log(1 + n) / log(1 + 500)``, saturating at 500 reviews
business status     10      OPERATIONAL 10, CLOSED_TEMPORARILY 3, anything else 0
type match          10      the business type's slug ("coffee_shop") is one of the place's
                            types, or each of its words is a word of one of them
==================  ======  ==========================================================

The sum is rounded half up, so the integer-valued signals move the score by exactly their
weight. Pure functions, no I/O.
"""

from __future__ import annotations

import math

from services.common.domains import type_slug, type_words
from services.common.providers.base import PlaceDetails

WEBSITE_POINTS = 25
PHONE_POINTS = 20
ADDRESS_POINTS = 15
RATING_POINTS = 12
REVIEW_POINTS = 8
REVIEW_SATURATION = 500
STATUS_POINTS = {"OPERATIONAL": 10, "CLOSED_TEMPORARILY": 3}
TYPE_MATCH_POINTS = 10
MIN_RATING, MAX_RATING = 3.0, 5.0


def _rating_points(rating: float) -> float:
    if rating <= 0:
        return 0.0
    share = (rating - MIN_RATING) / (MAX_RATING - MIN_RATING)
    return RATING_POINTS * min(1.0, max(0.0, share))


def _review_points(review_count: int) -> float:
    if review_count <= 0:
        return 0.0
    share = math.log1p(review_count) / math.log1p(REVIEW_SATURATION)
    return REVIEW_POINTS * min(1.0, share)


def type_matches(types: tuple[str, ...], business_type: str) -> bool:
    """Whether a place's ``types`` name ``business_type`` (its slug, or all of its words)."""
    slug = type_slug(business_type)
    if not slug:
        return False
    if slug in types:
        return True
    place_words = {word for t in types for word in type_words(t.replace("_", " "))}
    return all(word in place_words for word in type_words(business_type))


def score_place(details: PlaceDetails, business_type: str) -> int:
    """The 0-100 score of ``details`` for a search for ``business_type`` (weights above)."""
    total = (
        (WEBSITE_POINTS if details.website.strip() else 0)
        + (PHONE_POINTS if details.phone.strip() else 0)
        + (ADDRESS_POINTS if details.address_complete else 0)
        + _rating_points(details.rating)
        + _review_points(details.review_count)
        + STATUS_POINTS.get(details.business_status, 0)
        + (TYPE_MATCH_POINTS if type_matches(details.types, business_type) else 0)
    )
    return max(0, min(100, math.floor(total + 0.5)))


def qualify(
    scored: list[tuple[PlaceDetails, int]], min_confidence_score: int, max_results: int
) -> list[tuple[PlaceDetails, int]]:
    """The best ``max_results`` places scoring at least ``min_confidence_score``.

    Sorted by score, highest first; equal scores by ``place_id`` so the order is the same on
    every run.
    """
    if max_results <= 0:
        return []
    kept = [(details, score) for details, score in scored if score >= min_confidence_score]
    kept.sort(key=lambda pair: (-pair[1], pair[0].place_id))
    return kept[:max_results]
