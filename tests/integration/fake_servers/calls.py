"""Requests to the fakes as the providers' clients make them."""

from __future__ import annotations

import httpx

from tests.fakes import FakeProviders

QUERY = "bakery in Springfield 7"
SEARCH = "/v1/places:searchText"


def search(
    fakes: FakeProviders, http: httpx.Client, mask: str | None, **body: object
) -> httpx.Response:
    headers = {"X-Goog-Api-Key": fakes.google.api_key}
    if mask is not None:
        headers["X-Goog-FieldMask"] = mask
    payload = {"textQuery": QUERY, **body}
    return http.post(fakes.google.base_url + SEARCH, json=payload, headers=headers)


def details(fakes: FakeProviders, http: httpx.Client, place_id: str, mask: str) -> httpx.Response:
    headers = {"X-Goog-Api-Key": fakes.google.api_key, "X-Goog-FieldMask": mask}
    return http.get(f"{fakes.google.base_url}/v1/places/{place_id}", headers=headers)


def domain_search(fakes: FakeProviders, http: httpx.Client, **params: object) -> httpx.Response:
    query = {"api_key": fakes.hunter.api_key, **params}
    return http.get(fakes.hunter.base_url + "/v2/domain-search", params=query)  # type: ignore[arg-type]


def check(fakes: FakeProviders, http: httpx.Client, email: str) -> httpx.Response:
    params = {"key": fakes.neverbounce.api_key, "email": email}
    return http.get(fakes.neverbounce.base_url + "/v4/single/check", params=params)


def domains_with_emails(fakes: FakeProviders, query: str = QUERY) -> tuple[str, str]:
    """One domain of ``query`` with emails and one without."""
    domains = fakes.world.domains_for(query)
    with_emails = [d for d in domains if fakes.world.expected_email_count(d) > 0]
    without = [d for d in domains if fakes.world.expected_email_count(d) == 0]
    return with_emails[0], without[0]
