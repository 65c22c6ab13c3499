"""A change to jobs: one transaction, run again from the start when it meets a conflict,
then published.

Several jobs replicas write the same rows: a job's UPDATE is guarded by the version it was
read at (:class:`~services.jobs.unit.Conflict` when another replica changed it first), and
an INSERT may collide with one committed meanwhile (a report id another replica recorded,
an idempotency key, a lead). Either way the transaction's reads are stale, so the whole
change runs again in a fresh transaction, which reads what the other committed: a report
already applied is then found among the applied ids and skipped, which is the only way a
report counts as "already applied".
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from services.jobs import effects
from services.jobs import machine as m
from services.jobs.convert import state_of
from services.jobs.db import Writer
from services.jobs.models import JobRow, utcnow
from services.jobs.publishing import Applied, Publisher
from services.jobs.unit import Conflict, Unit

log = logging.getLogger(__name__)

# Fresh transactions one change may take before it is given up (the caller retries later).
ATTEMPTS = 8
Change = Callable[[Unit], list[Applied]]


class GaveUp(RuntimeError):
    """A change kept meeting conflicts; nothing of it was committed."""


def apply_event(unit: Unit, job: JobRow, event: m.Event) -> tuple[Applied, m.Transition]:
    """Run ``event`` through the state machine for ``job`` and carry out the result in
    ``unit``; what it leaves to do after commit, and the transition itself."""
    result = m.transition(state_of(job), event)
    applied = Applied(job_id=job.id, stop_work=m.StopWork() in result.effects)
    applied.outbox = effects.record(unit, job, result, utcnow())
    if result.state is not None:
        applied.job, applied.snapshots = job, result.snapshots
    return applied, result


class Changes:
    """Runs changes to jobs on the jobs service's :class:`Writer`, then publishes them."""

    def __init__(self, writer: Writer, publisher: Publisher) -> None:
        self._writer = writer
        self._publisher = publisher

    async def run(self, change: Change) -> list[Applied]:
        """Commit ``change(unit)`` (again from the start after a conflict), then publish
        what it caused. :class:`GaveUp` after :data:`ATTEMPTS` conflicts in a row; any
        other error is the change's own and is raised as it is (nothing committed)."""

        def work(conn: Connection) -> list[Applied]:
            unit = Unit(conn)
            applied = change(unit)
            unit.flush()
            return applied

        for attempt in range(1, ATTEMPTS + 1):
            try:
                applied = await self._writer.run(work)
                break
            except (Conflict, IntegrityError) as exc:
                log.debug("change met a conflict (attempt %d): %s", attempt, exc)
                # Replicas that collided would collide again in step: spread them out.
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        else:
            raise GaveUp(f"a change met a conflict {ATTEMPTS} times in a row")
        try:
            await self._publisher.after_commit(*applied)
        except Exception as exc:
            # Committed all the same: watchers re-read the job, the outbox relay publishes.
            log.warning("publishing a committed change failed: %r", exc)
        return applied
