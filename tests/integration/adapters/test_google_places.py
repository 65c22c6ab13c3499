"""The Google Places adapter against the fake: pagination and the 60-place cap, details
served free from the search (one paid call for a place never seen), charges equal to the
fake's bill, an unknown place as a permanent error, and a failure after a page keeping
what was paid for."""

from __future__ import annotations

import json

import httpx
import pytest

from services.common.errors import PermanentProviderError
from services.common.providers.google_places import GooglePlaces
from services.common.providers.http import make_client
from services.common.settings import Settings
from tests.fakes import FakeProviders
from tests.integration.adapters.helpers import (
    ATTEMPTS,
    FAST,
    QUERY,
    QUERY_PLACE,
    QUERY_TYPE,
    RecordingLimiter,
    assert_keys_not_in_urls,
    assert_no_secret,
    keys,
)


@pytest.mark.parametrize(("limit", "pages", "found"), [(45, 3, 45), (100, 3, 60), (5, 1, 5)])
async def test_google_search_paginates_up_to_limit_and_60(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient,
    limit: int, pages: int, found: int,
) -> None:  # fmt: skip
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    page = await places.search(QUERY_TYPE, QUERY_PLACE, limit)

    assert [p.place_id for p in page.places] == [
        p["id"] for p in fakes.world.places_for(QUERY)[:found]
    ]
    assert len(fakes.google.requests) == pages
    assert {json.loads(r.body)["pageSize"] for r in fakes.google.requests} == {min(20, limit)}
    assert {(c.provider, c.operation) for c in page.charges} == {("google_places", "text_search")}
    assert sum(c.cost_usd for c in page.charges) == pytest.approx(fakes.bill_for(QUERY))
    assert fakes.bill_for(QUERY) == pytest.approx(pages * 0.035)  # Enterprise, per page
    assert_keys_not_in_urls(fakes)


async def test_google_search_stops_at_the_last_page(settings: Settings) -> None:
    with FakeProviders(places_per_query=25) as small:
        small_settings = Settings.from_env({**small.env(), "PROVIDER_MAX_ATTEMPTS": "3"})
        async with make_client(small_settings) as http:
            places = GooglePlaces(http, small_settings, RecordingLimiter(), retry_policy=FAST)
            page = await places.search(QUERY_TYPE, QUERY_PLACE, 60)
        assert len(page.places) == 25
        assert len(small.google.requests) == 2  # 20, then 5 without a nextPageToken
        assert sum(c.cost_usd for c in page.charges) == pytest.approx(small.bill_for(QUERY))


async def test_google_details_come_from_the_search_free(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    page = await places.search(QUERY_TYPE, QUERY_PLACE, 20)
    requests, billed = len(fakes.google.requests), fakes.bill_for(QUERY)

    for summary in page.places:
        assert places.details_price(summary.place_id) == 0.0
        result = await places.details(summary.place_id)
        assert result.charges == []
        truth, details = fakes.world.place(summary.place_id) or {}, result.details
        kinds = {k for c in truth["addressComponents"] for k in c["types"]}
        assert (details.name, details.address, details.website, details.phone) == (
            truth["displayName"]["text"], truth["formattedAddress"],
            truth.get("websiteUri", ""), truth.get("nationalPhoneNumber", ""),
        )  # fmt: skip
        assert (details.rating, details.review_count, details.business_status) == (
            truth.get("rating", 0.0),
            truth.get("userRatingCount", 0),
            truth["businessStatus"],
        )
        assert details.types == tuple(truth["types"])
        assert details.address_complete == ({"street_number", "postal_code"} <= kinds)
    assert len(fakes.google.requests) == requests
    assert fakes.bill_for(QUERY) == billed


async def test_google_details_of_an_unseen_place_is_one_paid_call(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    place_id = fakes.world.places_for(QUERY)[3]["id"]
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    assert places.details_price(place_id) == pytest.approx(0.020)

    result = await places.details(place_id)
    assert result.details.place_id == place_id
    assert [(c.operation, c.cost_usd) for c in result.charges] == [("place_details", 0.020)]
    assert fakes.bill_for(QUERY) == pytest.approx(0.020)  # Place Details Enterprise
    assert fakes.google.requests[0].header("X-Goog-FieldMask").startswith("id,displayName,")
    again = await places.details(place_id)  # now remembered
    assert again.charges == [] and len(fakes.google.requests) == 1


async def test_google_unknown_place_is_permanent(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    places = GooglePlaces(client, settings, RecordingLimiter(), retry_policy=FAST)
    with pytest.raises(PermanentProviderError, match=r"NOT_FOUND \(404\)") as caught:
        await places.details("ChIJ" + "q" * 23)
    assert len(fakes.google.requests) == 1
    assert_no_secret(caught.value, *keys(fakes))


async def test_google_failure_after_a_page_keeps_what_was_paid_for(
    fakes: FakeProviders, settings: Settings, client: httpx.AsyncClient
) -> None:
    def second_page_fails(n: int) -> None:
        if n == 2:
            fakes.google.fail_next(ATTEMPTS, "server_error")

    limiter = RecordingLimiter(before=second_page_fails)
    page = await GooglePlaces(client, settings, limiter, retry_policy=FAST).search(
        QUERY_TYPE, QUERY_PLACE, 60
    )
    assert len(page.places) == 20
    assert len(page.charges) == 1
    assert sum(c.cost_usd for c in page.charges) == pytest.approx(fakes.bill_for(QUERY))
