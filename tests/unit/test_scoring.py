from dataclasses import replace

import pytest

from services.common.providers.base import PlaceDetails
from services.discovery.scoring import qualify, score_place, type_matches

PERFECT = PlaceDetails(
    place_id="p1",
    name="Blue Door Coffee",
    address="1423 Pine St, Seattle, WA 98101",
    phone="(206) 555-0123",
    website="https://bluedoorcoffee.com",
    rating=5.0,
    review_count=500,
    business_status="OPERATIONAL",
    types=("coffee_shop", "point_of_interest", "establishment"),
    address_complete=True,
)
EMPTY = PlaceDetails(
    place_id="p0",
    name="Nothing",
    address="",
    phone="",
    website="",
    rating=0.0,
    review_count=0,
    business_status="CLOSED_PERMANENTLY",
    types=("store",),
    address_complete=False,
)


def test_a_place_with_everything_scores_100() -> None:
    assert score_place(PERFECT, "coffee shop") == 100
    assert score_place(replace(PERFECT, review_count=2000), "coffee shop") == 100


def test_a_place_with_nothing_scores_0() -> None:
    assert score_place(EMPTY, "coffee shop") == 0


@pytest.mark.parametrize(
    ("change", "lost"),
    [
        ({"website": ""}, 25),
        ({"phone": ""}, 20),
        ({"address_complete": False}, 15),
        ({"rating": 0.0}, 12),
        ({"rating": 3.0}, 12),
        ({"rating": 4.0}, 6),
        ({"review_count": 0}, 8),
        ({"rating": 0.0, "review_count": 0}, 20),
        ({"business_status": "CLOSED_TEMPORARILY"}, 7),
        ({"business_status": "CLOSED_PERMANENTLY"}, 10),
        ({"types": ("store", "establishment")}, 10),
    ],
)
def test_each_signal_is_worth_its_weight(change: dict[str, object], lost: int) -> None:
    assert score_place(replace(PERFECT, **change), "coffee shop") == 100 - lost  # type: ignore[arg-type]


def test_weights_are_independent_of_the_other_signals() -> None:
    base = replace(PERFECT, phone="", rating=4.3, review_count=37)
    assert (
        score_place(base, "coffee shop") - score_place(replace(base, website=""), "coffee shop")
        == 25
    )


def test_reviews_grow_on_a_log_scale_and_saturate() -> None:
    scores = [
        score_place(replace(PERFECT, review_count=n), "coffee shop")
        for n in (0, 1, 10, 100, 500, 5000)
    ]
    assert scores == sorted(scores)
    assert scores[0] == 92 and scores[-1] == scores[-2] == 100
    assert 96 <= scores[3] < 100  # 100 reviews already earn most of the 8 points


def test_type_matches_slug_or_all_words() -> None:
    assert type_matches(("coffee_shop",), "Coffee Shops")
    assert type_matches(("shop", "coffee_roaster"), "coffee shop")
    assert not type_matches(("coffee_roaster",), "coffee shop")
    assert not type_matches(("cafe",), "coffee shop")
    assert not type_matches(("coffee_shop",), "")


def _scored(*pairs: tuple[str, int]) -> list[tuple[PlaceDetails, int]]:
    return [(replace(PERFECT, place_id=place_id), score) for place_id, score in pairs]


def test_qualify_filters_sorts_and_truncates() -> None:
    scored = _scored(("a", 40), ("b", 90), ("c", 59), ("d", 60), ("e", 75))
    kept = qualify(scored, min_confidence_score=60, max_results=2)
    assert [(d.place_id, s) for d, s in kept] == [("b", 90), ("e", 75)]
    everything = qualify(scored, min_confidence_score=60, max_results=10)
    assert [d.place_id for d, _ in everything] == ["b", "e", "d"]


def test_qualify_breaks_ties_by_place_id_whatever_the_input_order() -> None:
    scored = _scored(("z", 80), ("m", 80), ("a", 80), ("q", 95))
    expected = ["q", "a", "m", "z"]
    assert [d.place_id for d, _ in qualify(scored, 0, 10)] == expected
    assert [d.place_id for d, _ in qualify(scored[::-1], 0, 10)] == expected


def test_qualify_edge_cases() -> None:
    scored = _scored(("a", 50))
    assert qualify([], 0, 10) == []
    assert qualify(scored, 51, 10) == []
    assert qualify(scored, 50, 0) == []
    assert qualify(scored, 0, 10) == scored
    assert scored == _scored(("a", 50))  # the input list is not reordered
