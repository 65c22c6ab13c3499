"""The enrichment cache: never pay twice for the same lookup.

A domain's email search and an address's verification are kept in a NATS KV bucket shared
by every enrichment worker, for ENRICHMENT_CACHE_DAYS. A lead whose domain was looked up
recently reuses the result at zero cost and says it came from the cache. Entries carry
the time they were written, so shortening the freshness takes effect at once; the bucket's
own max age (the freshness when it was created) only bounds its size.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.common import bus, worker_metrics


def _key(provider: str, kind: str, value: str) -> str:
    # Per provider: a sandbox answer must never stand in for a real one. Hashed, because
    # KV keys allow a narrow alphabet and addresses may hold anything else.
    digest = hashlib.sha256(value.strip().lower().encode()).hexdigest()
    return f"{provider}.{kind}.{digest}"


@dataclass(frozen=True, slots=True)
class CachedEmail:
    email: str  # "" when the search found nothing
    confidence: int


@dataclass(frozen=True, slots=True)
class CachedVerification:
    status: str


@dataclass(frozen=True, slots=True)
class CachedOutcome:
    """What a domain's email waterfall ended with: the address (or ""), its verification,
    the step that found it, and the steps it ran (a later waterfall with more steps and no
    valid address to reuse runs again)."""

    email: str
    status: str
    source: str
    steps: tuple[str, ...]


class EnrichmentCache:
    def __init__(self, kv: KeyValue | None, freshness_days: float) -> None:
        self._kv = kv
        self._freshness_s = freshness_days * bus.DAY_S

    @classmethod
    async def open(cls, js: JetStreamContext, freshness_days: float) -> EnrichmentCache:
        """The shared cache (the jobs service creates its bucket); a freshness of 0 turns
        it off."""
        if freshness_days <= 0:
            return cls(None, 0)
        return cls(await bus.open_bucket(js, bus.CACHE_BUCKET), freshness_days)

    async def _get(self, key: str) -> dict[str, object] | None:
        if self._kv is None:
            return None
        data = await self._fresh(key)
        worker_metrics.cache_lookup(hit=data is not None)
        return data

    async def _fresh(self, key: str) -> dict[str, object] | None:
        assert self._kv is not None
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        try:
            data = json.loads(entry.value or b"")
        except ValueError:
            return None  # unreadable entry: look it up again
        if not isinstance(data, dict) or time.time() - float(data.get("at", 0)) > self._freshness_s:
            return None
        return data

    async def _put(self, key: str, data: dict[str, object]) -> None:
        if self._kv is not None:
            await self._kv.put(key, json.dumps({**data, "at": time.time()}).encode())

    async def email(self, provider: str, domain: str) -> CachedEmail | None:
        data = await self._get(_key(provider, "domain", domain))
        if data is None:
            return None
        return CachedEmail(str(data.get("email", "")), int(str(data.get("confidence", 0))))

    async def store_email(self, provider: str, domain: str, found: CachedEmail) -> None:
        data = {"email": found.email, "confidence": found.confidence}
        await self._put(_key(provider, "domain", domain), data)

    async def outcome(self, providers: str, domain: str) -> CachedOutcome | None:
        data = await self._get(_key(providers, "waterfall", domain))
        if data is None:
            return None
        steps = data.get("steps")
        return CachedOutcome(
            str(data.get("email", "")),
            str(data.get("status", "")),
            str(data.get("source", "")),
            tuple(str(s) for s in steps) if isinstance(steps, list) else (),
        )

    async def store_outcome(self, providers: str, domain: str, outcome: CachedOutcome) -> None:
        data: dict[str, object] = {
            "email": outcome.email,
            "status": outcome.status,
            "source": outcome.source,
            "steps": list(outcome.steps),
        }
        await self._put(_key(providers, "waterfall", domain), data)

    async def verification(self, provider: str, email: str) -> CachedVerification | None:
        data = await self._get(_key(provider, "email", email))
        return None if data is None else CachedVerification(str(data.get("status", "")))

    async def store_verification(
        self, provider: str, email: str, result: CachedVerification
    ) -> None:
        await self._put(_key(provider, "email", email), {"status": result.status})
