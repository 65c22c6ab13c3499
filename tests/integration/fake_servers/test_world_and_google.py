"""The fake world, and the fake Google Places over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes import (
    DETAILS_ENTERPRISE_USD,
    DETAILS_ESSENTIALS_USD,
    TEXT_SEARCH_ENTERPRISE_USD,
    TEXT_SEARCH_PRO_USD,
    FakeProviders,
    FakeWorld,
)
from tests.integration.fake_servers.calls import (
    QUERY,
    SEARCH,
    details,
    search,
)

# -- the world -----------------------------------------------------------------------------


def test_the_world_is_deterministic_and_has_realistic_gaps() -> None:
    a, b = FakeWorld(places_per_query=60, seed=3), FakeWorld(places_per_query=60, seed=3)
    places = a.places_for(QUERY)
    assert places == b.places_for(QUERY)
    assert all(p["id"].startswith("ChIJ") and len(p["id"]) >= 24 for p in places)
    assert len({p["id"] for p in places}) == 60
    assert any("websiteUri" not in p for p in places) and any("websiteUri" in p for p in places)
    assert any("nationalPhoneNumber" not in p for p in places)
    assert any("rating" not in p for p in places)
    kinds = [{t for c in p["addressComponents"] for t in c["types"]} for p in places]
    assert any("street_number" not in k for k in kinds)
    assert any("postal_code" not in k for k in kinds)
    assert a.places_for("florist in Salem 2") != places
    domains = a.domains_for(QUERY)
    assert not set(domains) & set(a.domains_for("florist in Salem 2"))
    assert a.job_of_domain(domains[0]) == QUERY and a.job_of_domain("www." + domains[0]) == QUERY
    assert a.job_of_place(places[0]["id"]) == QUERY and a.job_of_place("ChIJnope") == ""
    counts = [a.expected_email_count(d) for d in domains]
    assert 0 in counts and max(counts) <= 4
    email = next(e["value"] for d in domains for e in a.emails_for(d))
    assert a.job_of_email(email) == QUERY
    assert a.neverbounce_result(email) in ("valid", "invalid", "disposable", "catchall", "unknown")
    assert a.neverbounce_result("x@unknown.example") == b.neverbounce_result("x@unknown.example")


def test_env_gives_unique_keys_and_base_urls(fakes: FakeProviders) -> None:
    env = fakes.env()
    assert env["GOOGLE_PLACES_API_KEY"].startswith("gk-test-")
    assert (
        len({env["GOOGLE_PLACES_API_KEY"], env["HUNTER_API_KEY"], env["NEVERBOUNCE_API_KEY"]}) == 3
    )
    for name in ("GOOGLE_PLACES_BASE_URL", "HUNTER_BASE_URL", "NEVERBOUNCE_BASE_URL"):
        assert env[name].startswith("http://127.0.0.1:") and not env[name].endswith("/")
    other = FakeProviders()
    assert other.google.api_key != fakes.google.api_key


# -- Google Places -------------------------------------------------------------------------


def test_google_requires_a_field_mask(fakes: FakeProviders, http: httpx.Client) -> None:
    response = search(fakes, http, None)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    assert "FieldMask is a required parameter" in error["message"]
    assert fakes.google.operations == []


def test_google_returns_only_masked_fields(fakes: FakeProviders, http: httpx.Client) -> None:
    response = search(fakes, http, "places.id,places.displayName.text")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"places"}  # no nextPageToken: it was not in the mask
    assert len(body["places"]) == 20
    for place in body["places"]:
        assert set(place) == {"id", "displayName"} and set(place["displayName"]) == {"text"}
    assert fakes.google.bill_for(QUERY) == TEXT_SEARCH_PRO_USD


def test_google_unknown_mask_paths_are_rejected(fakes: FakeProviders, http: httpx.Client) -> None:
    response = search(fakes, http, "places.id,places.emails")
    assert response.status_code == 400 and "places.emails" in response.json()["error"]["message"]
    place_id = fakes.world.places_for(QUERY)[0]["id"]
    response = details(fakes, http, place_id, "places.displayName")  # details have no prefix
    assert response.status_code == 400
    assert fakes.google.operations == []


def test_google_pagination_stops_at_sixty(http: httpx.Client) -> None:
    with FakeProviders(places_per_query=75) as fakes:
        seen: list[str] = []
        token = None
        for _ in range(5):
            extra: dict[str, object] = {"pageToken": token} if token else {}
            body = search(fakes, http, "places.id,nextPageToken", **extra).json()
            seen += [p["id"] for p in body["places"]]
            token = body.get("nextPageToken")
            if not token:
                break
        assert len(seen) == 60 == len(set(seen))
        assert seen == [p["id"] for p in fakes.world.places_for(QUERY)[:60]]
        assert fakes.google.calls("text_search") == 3
        assert fakes.google.bill_for(QUERY) == 0.0  # ids and nextPageToken: IDs Only, free


def test_google_page_tokens_need_the_same_parameters(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    first = search(fakes, http, "places.id,nextPageToken", pageSize=10).json()
    assert len(first["places"]) == 10
    token = first["nextPageToken"]
    bad = search(fakes, http, "places.id", pageToken=token, textQuery="other query")
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    good = search(fakes, http, "places.id,nextPageToken", pageToken=token, pageSize=25)
    assert good.status_code == 200 and len(good.json()["places"]) == 15  # 25 -> 20, 25 in all
    assert "nextPageToken" not in good.json()
    assert search(fakes, http, "places.id", pageSize=-1).status_code == 400
    assert search(fakes, http, "places.id", pageToken="garbage!").status_code == 400
    assert search(fakes, http, "places.id", colour="red").status_code == 400


def test_google_bills_the_highest_sku_of_the_mask(fakes: FakeProviders, http: httpx.Client) -> None:
    assert search(fakes, http, "places.id,places.displayName,places.types").status_code == 200
    assert fakes.google.bill_for(QUERY) == TEXT_SEARCH_PRO_USD
    assert search(fakes, http, "places.displayName,places.websiteUri").status_code == 200
    total = TEXT_SEARCH_PRO_USD + TEXT_SEARCH_ENTERPRISE_USD
    assert fakes.google.bill_for(QUERY) == pytest.approx(total, abs=1e-12)
    assert [b.price_usd for b in fakes.google.billed] == [0.032, 0.035]
    assert search(fakes, http, "places.id").status_code == 200  # IDs Only: free
    assert fakes.google.calls("text_search") == 3 and len(fakes.google.billed) == 2


def test_google_place_details(fakes: FakeProviders, http: httpx.Client) -> None:
    place = fakes.world.places_for(QUERY)[3]
    response = details(fakes, http, place["id"], "formattedAddress,addressComponents,location")
    assert response.status_code == 200
    assert response.json() == {
        k: place[k] for k in ("formattedAddress", "addressComponents", "location")
    }
    assert fakes.google.bill_for(QUERY) == DETAILS_ESSENTIALS_USD
    response = details(fakes, http, place["id"], "id,displayName,rating,websiteUri")
    assert set(response.json()) <= {"id", "displayName", "rating", "websiteUri"}
    assert fakes.google.billed[-1].price_usd == DETAILS_ENTERPRISE_USD
    assert fakes.google.billed[-1].job_key == QUERY
    by_param = http.get(
        f"{fakes.google.base_url}/v1/places/{place['id']}",
        params={"key": fakes.google.api_key, "fields": "id"},
    )
    assert by_param.json() == {"id": place["id"]}
    missing = details(fakes, http, "ChIJ" + "z" * 23, "id")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    assert fakes.google.calls("place_details") == 3


def test_google_key_errors(fakes: FakeProviders, http: httpx.Client) -> None:
    url = fakes.google.base_url + SEARCH
    wrong = http.post(url, json={"textQuery": QUERY}, headers={"X-Goog-Api-Key": "nope"})
    assert wrong.status_code == 400
    error = wrong.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "API_KEY_INVALID"
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    missing = http.post(url, json={"textQuery": QUERY}, headers={"X-Goog-FieldMask": "places.id"})
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    by_param = http.post(
        url, params={"key": fakes.google.api_key}, json={"textQuery": QUERY},
        headers={"X-Goog-FieldMask": "places.id"},
    )  # fmt: skip
    assert by_param.status_code == 200
    assert http.get(fakes.google.base_url + "/v1/nowhere").status_code == 404
