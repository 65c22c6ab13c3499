"""The email waterfall's vocabulary: its steps, the role addresses of its pattern step, and
the rules their settings keep (EMAIL_WATERFALL, ROLE_ADDRESSES, MX_RESOLVER).

Shared by the settings (checked at start-up), the enrichment worker that runs the steps
(services/enrichment/waterfall.py) and the jobs service that stores which step found a
lead's email (``leads.email_source``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from services.common.errors import ConfigError
from services.common.plan import ROLE_ADDRESSES_MAX

if TYPE_CHECKING:
    from services.common.settings import Settings

WEBSITE, PATTERN, HUNTER = "website", "pattern", "hunter"
STEPS = (WEBSITE, PATTERN, HUNTER)
CACHE = "cache"  # not a step: the email came from the enrichment cache
# What Lead.email_source may hold ("" when no step found an email).
SOURCES = frozenset({*STEPS, CACHE, ""})
MX_RESOLVERS = ("dns", "none")
_LOCAL_PART = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,30}[a-z0-9])?$")


def items(text: str) -> tuple[str, ...]:
    """A comma-separated setting as its lower-case, stripped, non-empty items, in order."""
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def check(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming the first waterfall setting that breaks its rule."""
    steps = items(settings.email_waterfall)
    if not steps or any(step not in STEPS for step in steps) or len(set(steps)) < len(steps):
        raise ConfigError(
            f"EMAIL_WATERFALL={settings.email_waterfall!r} must name each of "
            f"{', '.join(STEPS)} at most once, at least one of them"
        )
    roles = items(settings.role_addresses)
    if PATTERN in steps and not roles:
        raise ConfigError("ROLE_ADDRESSES must name at least one address for the pattern step")
    if len(roles) > ROLE_ADDRESSES_MAX:
        raise ConfigError(f"ROLE_ADDRESSES must name at most {ROLE_ADDRESSES_MAX} addresses")
    for role in roles:
        if not _LOCAL_PART.match(role):
            raise ConfigError(f"ROLE_ADDRESSES: {role!r} is not an address's local part")
    if settings.mx_resolver not in MX_RESOLVERS:
        raise ConfigError(f"MX_RESOLVER must be one of {', '.join(MX_RESOLVERS)}")
    if settings.mx_nameserver:
        host, sep, port = settings.mx_nameserver.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"MX_NAMESERVER={settings.mx_nameserver!r} must be host:port")
