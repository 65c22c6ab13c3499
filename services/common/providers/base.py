"""The provider interfaces: one small Protocol per capability.

Sandbox and real HTTP adapters implement the same Protocols and are interchangeable; which
one serves a capability is decided in one place, :func:`services.common.providers.open_providers`.
Every method returns the charges it incurred, so the caller can account for each billable
call even when the call found nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Charge:
    """One billable provider call."""

    provider: str  # e.g. "sandbox", "google_places", "hunter", "neverbounce"
    operation: str  # e.g. "text_search", "place_details", "domain_search", "verify"
    cost_usd: float
    # True when the call went through a Meter: it travels on reports as an intent (list
    # price, then what was billed), not as a charge (services.common.providers.metering).
    metered: bool = False


@dataclass(frozen=True, slots=True)
class PlaceSummary:
    """What a text search returns for one place."""

    place_id: str
    name: str
    address: str
    types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlaceDetails:
    """Everything scoring looks at for one place."""

    place_id: str
    name: str
    address: str
    phone: str  # "" when the place has none
    website: str  # "" when the place has none
    rating: float  # 0.0 when unrated
    review_count: int
    business_status: str  # OPERATIONAL, CLOSED_TEMPORARILY, CLOSED_PERMANENTLY
    types: tuple[str, ...]
    address_complete: bool  # street number, street, city, region and postal code present


@dataclass(frozen=True, slots=True)
class SearchPage:
    places: list[PlaceSummary]
    charges: list[Charge] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DetailsResult:
    details: PlaceDetails
    charges: list[Charge] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EmailCandidate:
    """The best contact email found for a domain, or none."""

    email: str  # "" when none was found
    confidence: int  # 0-100, the provider's own confidence
    charges: list[Charge] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of verifying one address: valid, invalid, disposable, catchall or unknown."""

    status: str
    charges: list[Charge] = field(default_factory=list)


class RateLimiter(Protocol):
    """A request-rate limit for one provider, shared by every worker process."""

    async def acquire(self) -> None:
        """Wait until one more request may be sent."""
        ...

    async def penalize(self, seconds: float) -> None:
        """The provider said "too many requests": nobody sends for ``seconds``."""
        ...


class PlaceSearch(Protocol):
    """Text search and details (Google Places API (New), or the sandbox)."""

    name: str
    page_size: int  # most places one billed search call returns
    billed: bool  # whether somebody bills its calls (False: the simulated sandbox)

    def price(self, operation: str) -> float:
        """The most one call of ``operation`` ("text_search", "place_details") can cost."""
        ...

    def details_price(self, place_id: str) -> float:
        """What :meth:`details` of this place will cost (0 when already known)."""
        ...

    async def search(self, business_type: str, location: str, limit: int) -> SearchPage:
        """Up to ``limit`` places matching ``business_type`` in ``location``."""
        ...

    async def details(self, place_id: str) -> DetailsResult:
        """Details of one place returned by :meth:`search`."""
        ...


class EmailFinder(Protocol):
    """Email discovery for a business website's domain (Hunter.io, or the sandbox)."""

    name: str

    def price(self, operation: str) -> float:
        """The most one call of ``operation`` ("email_search") can cost."""
        ...

    async def find_email(self, domain: str, company: str) -> EmailCandidate: ...


class EmailVerifier(Protocol):
    """Deliverability check for one address (NeverBounce, or the sandbox)."""

    name: str

    def price(self, operation: str) -> float:
        """The most one call of ``operation`` ("verify") can cost."""
        ...

    async def verify(self, email: str) -> Verification: ...
