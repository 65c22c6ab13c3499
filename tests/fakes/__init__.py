"""Fake provider servers for tests: Google Places (New), Hunter v2 and NeverBounce v4.

Real HTTP servers on 127.0.0.1 (free ports) speaking each provider's wire format, so the
real adapters can be tested against them and whole campaigns can run against them from
separate worker processes. :class:`FakeProviders` bundles one :class:`FakeWorld` with the
three fakes::

    with FakeProviders(places_per_query=25) as fakes:
        env = fakes.env()  # keys and base URLs for the services
        ...                # run a campaign whose text query is "bakery in Springfield 7"
        assert job_total_cost == pytest.approx(fakes.bill_for("bakery in Springfield 7"))

Each module's docstring cites the provider documentation it follows.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from tests.fakes.base import FAULT_KINDS, Bill, FakeServer, Reply, RequestRecord, wait_quiet
from tests.fakes.google_places import FakeGooglePlaces
from tests.fakes.google_skus import (
    DETAILS_ENTERPRISE_ATMOSPHERE_USD,
    DETAILS_ENTERPRISE_USD,
    DETAILS_ESSENTIALS_USD,
    DETAILS_IDS_ONLY_USD,
    DETAILS_PRO_USD,
    TEXT_SEARCH_ENTERPRISE_ATMOSPHERE_USD,
    TEXT_SEARCH_ENTERPRISE_USD,
    TEXT_SEARCH_IDS_ONLY_USD,
    TEXT_SEARCH_PRO_USD,
    details_sku,
    text_search_sku,
)
from tests.fakes.hunter import CREDIT_USD as HUNTER_CREDIT_USD
from tests.fakes.hunter import FakeHunter
from tests.fakes.neverbounce import CHECK_USD as NEVERBOUNCE_CHECK_USD
from tests.fakes.neverbounce import FakeNeverBounce
from tests.fakes.websites import FakeWebsites
from tests.fakes.world import FakeWorld

__all__ = [
    "DETAILS_ENTERPRISE_ATMOSPHERE_USD",
    "DETAILS_ENTERPRISE_USD",
    "DETAILS_ESSENTIALS_USD",
    "DETAILS_IDS_ONLY_USD",
    "DETAILS_PRO_USD",
    "FAULT_KINDS",
    "HUNTER_CREDIT_USD",
    "NEVERBOUNCE_CHECK_USD",
    "TEXT_SEARCH_ENTERPRISE_ATMOSPHERE_USD",
    "TEXT_SEARCH_ENTERPRISE_USD",
    "TEXT_SEARCH_IDS_ONLY_USD",
    "TEXT_SEARCH_PRO_USD",
    "Bill",
    "FakeGooglePlaces",
    "FakeHunter",
    "FakeNeverBounce",
    "FakeProviders",
    "FakeServer",
    "FakeWebsites",
    "FakeWorld",
    "Reply",
    "RequestRecord",
    "details_sku",
    "text_search_sku",
    "wait_quiet",
]


class FakeProviders:
    """One :class:`FakeWorld` and the three fakes over it, started and stopped together."""

    def __init__(
        self,
        places_per_query: int = 25,
        seed: int | str = 0,
        *,
        every_domain_has_emails: bool = False,
        websites: bool = False,
        **server_kwargs: Any,
    ) -> None:
        """``server_kwargs`` (``latency_s``, ``slow_s``) go to every fake;
        ``every_domain_has_emails`` to the :class:`FakeWorld`. ``websites``: the businesses
        have websites on loopback (:class:`FakeWebsites`) and :meth:`env` runs the whole
        email waterfall on them; without, :meth:`env` asks for Hunter alone
        (EMAIL_WATERFALL=hunter), as enrichment was before the waterfall."""
        self.world = FakeWorld(
            places_per_query=places_per_query,
            seed=seed,
            every_domain_has_emails=every_domain_has_emails,
        )
        self.google = FakeGooglePlaces(self.world, **server_kwargs)
        self.hunter = FakeHunter(self.world, **server_kwargs)
        self.neverbounce = FakeNeverBounce(self.world, **server_kwargs)
        self.websites = FakeWebsites(self.world) if websites else None

    @property
    def fakes(self) -> tuple[FakeGooglePlaces, FakeHunter, FakeNeverBounce]:
        return self.google, self.hunter, self.neverbounce

    def start(self) -> None:
        try:
            for fake in self.fakes:
                fake.start()
            if self.websites is not None:
                self.websites.start()
                self.world.website_port = self.websites.port
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for fake in self.fakes:
            fake.stop()
        if self.websites is not None:
            self.websites.stop()

    def __enter__(self) -> FakeProviders:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment the services need to use these fakes (keys and base URLs)."""
        return {
            "GOOGLE_PLACES_API_KEY": self.google.api_key,
            "HUNTER_API_KEY": self.hunter.api_key,
            "NEVERBOUNCE_API_KEY": self.neverbounce.api_key,
            "GOOGLE_PLACES_BASE_URL": self.google.base_url,
            "HUNTER_BASE_URL": self.hunter.base_url,
            "NEVERBOUNCE_BASE_URL": self.neverbounce.base_url,
            **self.waterfall_env(),
        }

    def waterfall_env(self) -> dict[str, str]:
        """The email waterfall's settings for these fakes (see the constructor)."""
        if self.websites is None:
            return {"EMAIL_WATERFALL": "hunter"}
        # The sites are loopback names (RFC 6761 "localhost"): allowlisted for tests only.
        # No DNS in tests: every domain is taken to receive mail.
        return {"WEBSITE_ALLOWED_HOSTS": ".localhost", "MX_RESOLVER": "none"}

    def bill_for(self, job_key: str) -> float:
        """What the three providers billed for ``job_key`` (the campaign's text query)."""
        micros = sum(
            b.price_micros for f in self.fakes for b in f.operations if b.job_key == job_key
        )
        return micros / 1_000_000

    def total_billed(self) -> float:
        return sum(b.price_micros for f in self.fakes for b in f.operations) / 1_000_000

    def reset(self) -> None:
        for fake in self.fakes:
            fake.reset()

    # -- holding answers (see tests.fakes.base) --------------------------------------------

    def hold(self) -> None:
        """Hold every fake's answers (requests are still recorded and billed)."""
        for fake in self.fakes:
            fake.hold()

    def release(self) -> None:
        for fake in self.fakes:
            fake.release()

    def held_count(self) -> int:
        """Requests waiting for :meth:`release` across the three fakes."""
        return sum(fake.held_count() for fake in self.fakes)

    def wait_quiet(self, quiet_s: float = 0.3, timeout: float = 10.0) -> bool:
        """Block until none of the fakes has received a request for ``quiet_s`` seconds (from
        this call at the earliest); False when ``timeout`` ran out first."""
        return wait_quiet(self.fakes, quiet_s, timeout)

    def in_flight(self) -> list[tuple[FakeServer, RequestRecord]]:
        """(fake, request) of every request received and not yet answered, all fakes."""
        return [(fake, req) for fake in self.fakes for req in fake.in_flight()]

    def requests_for(self, job_key: str) -> list[tuple[str, RequestRecord]]:
        """(provider name, request) of every request made for ``job_key``, in arrival order."""
        found = [(f.name, r) for f in self.fakes for r in f.requests_for(job_key)]
        return sorted(found, key=lambda item: item[1].ts)
