"""The baseline of the speedup: one campaign the way the original single-request design ran
it, every provider call after the previous one, in one process.

The same sandbox providers and scoring the workers use, imported directly: a text search,
details for each place found, scoring and qualification, then for each kept lead an email
search and (when found) a verification. No NATS, no database, no reports.

``python -m bench.sequential LATENCY_MS MAX_PLACES TYPE LOCATION MAX_RESULTS`` prints one
JSON object (``wall_s``, ``calls``, ``leads``); the bench runs it as a separate process so
its timers share nothing with the bench's event loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass

from services.common.domains import domain_of
from services.common.plan import SEARCH_MAX, SEARCH_MIN
from services.common.providers.sandbox import (
    SandboxEmailFinder,
    SandboxEmailVerifier,
    SandboxPlaces,
)
from services.common.settings import Settings
from services.discovery.scoring import qualify, score_place


@dataclass(frozen=True)
class SequentialRun:
    wall_s: float
    calls: int
    leads: int


async def run_sequential(
    latency_ms: float,
    max_places: int,
    business_type: str,
    location: str,
    max_results: int,
    min_score: int = 0,
    verify: bool = True,
) -> SequentialRun:
    settings = Settings(sandbox_latency_ms=latency_ms, sandbox_max_places=max_places)
    places = SandboxPlaces(settings)
    finder, verifier = SandboxEmailFinder(settings), SandboxEmailVerifier(settings)
    limit = min(SEARCH_MAX, max(SEARCH_MIN, 2 * max_results))  # as the discovery worker asks
    started = time.perf_counter()
    page = await places.search(business_type, location, limit)
    calls = 1
    scored = []
    for place in page.places:
        details = (await places.details(place.place_id)).details
        calls += 1
        scored.append((details, score_place(details, business_type)))
    kept = qualify(scored, min_score, max_results)
    for details, _score in kept:
        domain = domain_of(details.website)
        if not domain:
            continue  # no website: nothing to look up
        found = await finder.find_email(domain, details.name)
        calls += 1
        if found.email and verify:
            await verifier.verify(found.email)
            calls += 1
    return SequentialRun(time.perf_counter() - started, calls, len(kept))


def main(argv: list[str]) -> int:
    latency_ms, max_places, business_type, location, max_results = argv
    run = asyncio.run(
        run_sequential(
            float(latency_ms), int(max_places), business_type, location, int(max_results)
        )
    )
    print(json.dumps({"wall_s": run.wall_s, "calls": run.calls, "leads": run.leads}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
