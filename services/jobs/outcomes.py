"""What earlier campaigns found and spent: the history EstimateCampaign learns its rates from.

A finished campaign's row holds its config and its metrics (places found, leads qualified,
enriched and answered from the cache, emails found and verified, spend per provider). This
module reads the most recent COMPLETED ones, bounded: the caller's last
:data:`USER_SAMPLE` (index ``ix_jobs_user_created``, read each time) and the deployment's
last :data:`DEPLOYMENT_SAMPLE` (kept per replica for :data:`DEPLOYMENT_TTL_S`, so a burst of
estimates costs one such read a minute), each with one grouped count of those jobs' leads
without a website. Retries are left out: they skip discovery and
reuse the leads their first job paid for, so their figures describe no campaign.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.jobs.convert import budget_micros_of
from services.jobs.machine import Status
from services.jobs.models import JobRow, LeadRow

USER_SAMPLE = 50  # the caller's most recent finished campaigns
DEPLOYMENT_SAMPLE = 200  # everybody's most recent finished campaigns
DEPLOYMENT_TTL_S = 60.0  # the deployment's sample is read again after this long


def query_key(business_type: str, location: str) -> str:
    """A campaign's search as the places provider sees it, case and spacing aside: two
    campaigns with one key find the same places."""
    return f"{' '.join(business_type.lower().split())} in {' '.join(location.lower().split())}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One COMPLETED campaign: what it asked for and what it found and spent."""

    user_id: str
    created_at: datetime
    query: str  # query_key of its config
    max_results: int
    min_confidence_score: int
    verify_emails: bool
    budget_micros: int
    target_verified_emails: int
    businesses_found: int
    qualified_leads: int
    leads_enriched: int
    leads_from_cache: int
    emails_found: int
    emails_verified: int
    leads_skipped_budget: int
    leads_skipped_goal: int
    cost_by_provider: Mapping[str, int] = field(default_factory=dict)
    providers: Mapping[str, str] = field(default_factory=dict)  # capability -> provider
    # Of its qualified leads, those whose place has no website: ranked last (a website
    # scores), they end the waterfall before any paid step.
    leads_without_website: int = 0

    @property
    def total_cost_micros(self) -> int:
        return sum(self.cost_by_provider.values())

    @property
    def leads_paid(self) -> int:
        """Leads whose enrichment ran and was not answered by the cache."""
        return max(0, self.leads_enriched - self.leads_from_cache)

    @property
    def leads_with_website(self) -> int:
        """Qualified leads whose place has a website: those the waterfall may pay for."""
        return max(0, self.qualified_leads - self.leads_without_website)

    @property
    def sites_paid(self) -> int:
        """Leads with a website whose enrichment ran and was not answered by the cache (the
        leads are enriched by rank, those without a website last)."""
        return max(0, min(self.leads_enriched, self.leads_with_website) - self.leads_from_cache)


def outcome_of(
    user_id: str, created_at: datetime, config: Mapping[str, Any], metrics: Mapping[str, Any]
) -> Outcome:
    """The :class:`Outcome` of a job row's ``config`` and ``metrics`` (JSON as stored)."""

    def n(key: str) -> int:
        return int(metrics.get(key, 0) or 0)

    return Outcome(
        user_id=user_id,
        created_at=created_at,
        query=query_key(str(config.get("business_type", "")), str(config.get("location", ""))),
        max_results=int(config.get("max_results", 0) or 0),
        min_confidence_score=int(config.get("min_confidence_score", 0) or 0),
        verify_emails=bool(config.get("verify_emails", False)),
        budget_micros=budget_micros_of(config),
        target_verified_emails=int(config.get("target_verified_emails", 0) or 0),
        businesses_found=n("businesses_found"),
        qualified_leads=n("qualified_leads"),
        leads_enriched=n("leads_enriched"),
        leads_from_cache=n("leads_from_cache"),
        emails_found=n("emails_found"),
        emails_verified=n("emails_verified"),
        leads_skipped_budget=n("leads_skipped_budget"),
        leads_skipped_goal=n("leads_skipped_goal"),
        cost_by_provider={
            str(k): int(v) for k, v in (metrics.get("cost_by_provider") or {}).items()
        },
        providers={str(k): str(v) for k, v in (metrics.get("providers") or {}).items()},
    )


@dataclass(frozen=True, slots=True)
class History:
    """The caller's recent campaigns and the deployment's others (none in both), newest
    first."""

    mine: Sequence[Outcome] = ()
    others: Sequence[Outcome] = ()

    @property
    def latest(self) -> Outcome | None:
        both = [*self.mine[:1], *self.others[:1]]
        return max(both, key=lambda o: o.created_at) if both else None


_COLUMNS = (JobRow.id, JobRow.user_id, JobRow.created_at, JobRow.config, JobRow.metrics)


def _finished(limit: int) -> Any:
    return (
        select(*_COLUMNS)
        .where(JobRow.status == Status.COMPLETED.value, JobRow.retry_of.is_(None))
        .order_by(JobRow.created_at.desc())
        .limit(limit)
    )


class Outcomes:
    """Reads :class:`History` for a user; the deployment's part cached per replica."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        user_sample: int = USER_SAMPLE,
        deployment_sample: int = DEPLOYMENT_SAMPLE,
        ttl_s: float = DEPLOYMENT_TTL_S,
    ) -> None:
        self._sessions = sessions
        self._user_sample = user_sample
        self._deployment_sample = deployment_sample
        self._ttl_s = ttl_s
        self._deployment: tuple[float, list[tuple[str, Outcome]]] | None = None

    async def history(self, user_id: str) -> History:
        """``user_id``'s last finished campaigns and the deployment's others."""
        async with self._sessions() as session:
            mine = await session.execute(
                _finished(self._user_sample).where(JobRow.user_id == user_id)
            )
            own = await _with_sites(session, list(mine))
            everyone = await self._everyone(session)
        seen = {job_id for job_id, _ in own}
        others = [o for job_id, o in everyone if job_id not in seen and o.user_id != user_id]
        return History(mine=[o for _, o in own], others=others)

    async def _everyone(self, session: AsyncSession) -> list[tuple[str, Outcome]]:
        now = time.monotonic()
        if self._deployment is None or now - self._deployment[0] > self._ttl_s:
            rows = await session.execute(_finished(self._deployment_sample))
            self._deployment = (now, await _with_sites(session, list(rows)))
        return self._deployment[1]


def _outcome(row: Any, without_website: int = 0) -> Outcome:
    o = outcome_of(row.user_id, row.created_at, row.config or {}, row.metrics or {})
    return replace(o, leads_without_website=without_website)


async def _with_sites(session: AsyncSession, rows: list[Any]) -> list[tuple[str, Outcome]]:
    """(job id, outcome) of each job row, with its leads without a website counted: one
    grouped count over those jobs' leads (index ``ix_leads_job_rank``)."""
    ids = [row.id for row in rows]
    counts: dict[str, int] = {}
    if ids:
        found = await session.execute(
            select(LeadRow.job_id, func.count())
            .where(LeadRow.job_id.in_(ids), LeadRow.website == "")
            .group_by(LeadRow.job_id)
        )
        counts = {str(job_id): int(n) for job_id, n in found}
    return [(row.id, _outcome(row, counts.get(row.id, 0))) for row in rows]
