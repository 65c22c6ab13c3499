"""Provider interfaces, their implementations, and the one place that picks between them.

Workers call :func:`select_providers` once at start-up and pass the :class:`Providers` down;
nothing else decides which implementation serves a capability.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from services.common.providers.sandbox import (
    PROVIDER as SANDBOX,
)
from services.common.providers.sandbox import (
    SandboxEmailFinder,
    SandboxEmailVerifier,
    SandboxPlaces,
)
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
    "select_providers",
]


@dataclass(frozen=True, slots=True)
class Providers:
    """The implementation serving each capability."""

    places: PlaceSearch
    email_finder: EmailFinder
    email_verifier: EmailVerifier

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


def select_providers(settings: Settings) -> Providers:
    """The providers for ``settings``: per capability, the real adapter when its API key is
    set, otherwise the sandbox.

    The selection by API key lives here; until the HTTP adapters exist every capability is
    served by the sandbox.
    """
    return Providers(
        places=SandboxPlaces(settings),
        email_finder=SandboxEmailFinder(settings),
        email_verifier=SandboxEmailVerifier(settings),
    )
