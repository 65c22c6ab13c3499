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

from services.common import tracing
from services.common.logs import job_context
from services.jobs import effects, history, metrics
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
    before = state_of(job)
    result = m.transition(before, event)
    applied = Applied(job_id=job.id, stop_work=m.StopWork() in result.effects)
    if result.state is not None and result.state.status.terminal and not before.status.terminal:
        applied.finished = result.state.status
    now = utcnow()
    applied.outbox = effects.record(unit, job, result, now)
    history.record(unit, job.id, m.history_of(before, event, result), now)
    if result.state is not None:
        applied.job, applied.snapshots = job, result.snapshots
        applied.cause = tracing.current_traceparent()
    return applied, result


def trace_ending(applied: Applied) -> None:
    """The span of a job becoming final in ``applied`` (once committed), in the job's
    trace: a child of the span that caused it (applying the last report), else of the
    submit's (the watchdog, or a CancelJob call of another trace, linked)."""
    if not tracing.enabled() or applied.job is None:
        return
    final = next((s.state for s in applied.snapshots if s.state.status.terminal), None)
    if final is None:
        return
    attributes = {
        tracing.JOB_ID: applied.job_id,
        tracing.STATUS: final.status.value,
        tracing.STAGE: final.stage.value,
    }
    name = f"job {final.status.value.lower()}"
    with tracing.event_span(name, applied.job.trace_context, applied.cause, attributes):
        pass


def log_ending(applied: Applied) -> None:
    """The one line of a job becoming final in ``applied``: a WARNING naming the job, the
    provider and the cause when it FAILED (what to alert on), INFO otherwise. A final job
    refuses every later event, so this comes once per job."""
    final = next((s.state for s in applied.snapshots if s.state.status.terminal), None)
    if final is None:
        return
    with job_context(applied.job_id):
        if final.status != m.Status.FAILED:
            log.info("job %s %s", applied.job_id, final.status.value)
            return
        # The error names the provider that failed the job, when one did.
        provider = m.failed_provider(final.error)
        log.warning("job %s FAILED: %s", applied.job_id, final.error, extra={"provider": provider})


class Changes:
    """Runs changes to jobs on the jobs service's :class:`Writer`, then publishes them."""

    def __init__(
        self,
        writer: Writer,
        publisher: Publisher,
        *,
        on_delivery: Callable[[], None] | None = None,
    ) -> None:
        """``on_delivery``: called after a change that queued a completion webhook commits
        (the webhook sender's wake-up; a job ending with no webhook wakes nothing)."""
        self._writer = writer
        self._publisher = publisher
        self._on_delivery = on_delivery

    @property
    def blocks_loop(self) -> bool:
        """Whether a change's transaction holds the event loop until it ends (SQLite)."""
        return self._writer.blocks_loop

    async def run(self, change: Change) -> list[Applied]:
        """Commit ``change(unit)`` (again from the start after a conflict), then publish
        what it caused. :class:`GaveUp` after :data:`ATTEMPTS` conflicts in a row; any
        other error is the change's own and is raised as it is (nothing committed)."""

        def work(conn: Connection) -> tuple[list[Applied], int]:
            unit = Unit(conn)
            applied = change(unit)
            unit.flush()
            return applied, unit.deliveries_queued

        for attempt in range(1, ATTEMPTS + 1):
            try:
                applied, deliveries = await self._writer.run(work)
                break
            except (Conflict, IntegrityError) as exc:
                log.debug("change met a conflict (attempt %d): %s", attempt, exc)
                # Replicas that collided would collide again in step: spread them out.
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        else:
            raise GaveUp(f"a change met a conflict {ATTEMPTS} times in a row")
        for done in applied:
            if done.finished is not None:
                metrics.job_finished(done.finished)
        if deliveries and self._on_delivery is not None:
            self._on_delivery()
        for one in applied:
            log_ending(one)
            trace_ending(one)
        try:
            await self._publisher.after_commit(*applied)
        except Exception as exc:
            # Committed all the same: watchers re-read the job, the outbox relay publishes.
            log.warning("publishing a committed change failed: %r", exc)
        return applied
