"""Provider interfaces, their implementations, and the one place that picks between them.

Workers call :func:`open_providers` once at start-up and pass the :class:`Providers` down;
nothing else decides which implementation serves a capability.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from nats.js import JetStreamContext

from services.common.providers.base import (
    Charge,
    DetailsResult,
    EmailCandidate,
    EmailFinder,
    EmailVerifier,
    PlaceDetails,
    PlaceSearch,
    PlaceSummary,
    SearchPage,
    Verification,
)
from services.common.providers.google_places import GooglePlaces
from services.common.providers.http import make_client
from services.common.providers.hunter import Hunter
from services.common.providers.neverbounce import NeverBounce
from services.common.providers.sandbox import (
    PROVIDER as SANDBOX,
)
from services.common.providers.sandbox import (
    SandboxEmailFinder,
    SandboxEmailVerifier,
    SandboxPlaces,
)
from services.common.ratelimit import SharedRateLimiter, open_bucket
from services.common.settings import Settings

__all__ = [
    "SANDBOX",
    "Charge",
    "DetailsResult",
    "EmailCandidate",
    "EmailFinder",
    "EmailVerifier",
    "PlaceDetails",
    "PlaceSearch",
    "PlaceSummary",
    "Providers",
    "SandboxEmailFinder",
    "SandboxEmailVerifier",
    "SandboxPlaces",
    "SearchPage",
    "Verification",
    "open_providers",
    "sandbox_providers",
]


@dataclass(frozen=True, slots=True)
class Providers:
    """The implementation serving each capability, and the HTTP client they share."""

    places: PlaceSearch
    email_finder: EmailFinder
    email_verifier: EmailVerifier
    client: httpx.AsyncClient | None = None

    def names(self) -> dict[str, str]:
        """Capability -> provider name, e.g. ``{"places": "sandbox", ...}`` (for job metrics)."""
        return {
            "places": self.places.name,
            "email_finder": self.email_finder.name,
            "email_verifier": self.email_verifier.name,
        }

    @property
    def sandbox(self) -> bool:
        """True when any capability is served by the sandbox (its results are not real)."""
        return SANDBOX in self.names().values()

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def sandbox_providers(settings: Settings) -> Providers:
    """Sandbox providers for every capability (no network, no NATS): the offline default."""
    return Providers(
        places=SandboxPlaces(settings),
        email_finder=SandboxEmailFinder(settings),
        email_verifier=SandboxEmailVerifier(settings),
    )


async def open_providers(settings: Settings, js: JetStreamContext) -> Providers:
    """The providers for ``settings``: per capability, the real adapter when its API key is
    set, otherwise the sandbox. Real adapters share one pooled HTTP client per process and
    one rate limit per provider across every process (kept in NATS KV)."""
    sandbox = sandbox_providers(settings)
    if not (
        settings.google_places_api_key or settings.hunter_api_key or settings.neverbounce_api_key
    ):
        return sandbox
    client = make_client(settings)
    kv = await open_bucket(js)

    def limiter(provider: str) -> SharedRateLimiter:
        rps = getattr(settings, f"rate_limit_{provider}_rps")
        burst = getattr(settings, f"rate_limit_{provider}_burst")
        return SharedRateLimiter(kv, provider, rps, burst)

    places: PlaceSearch = sandbox.places
    finder: EmailFinder = sandbox.email_finder
    verifier: EmailVerifier = sandbox.email_verifier
    if settings.google_places_api_key:
        places = GooglePlaces(client, settings, limiter("google_places"))
    if settings.hunter_api_key:
        finder = Hunter(client, settings, limiter("hunter"))
    if settings.neverbounce_api_key:
        verifier = NeverBounce(client, settings, limiter("neverbounce"))
    return Providers(places, finder, verifier, client)
