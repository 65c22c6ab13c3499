"""EstimateCampaign and SubmitCampaign's ``max_estimated_cost``: the history read for the
caller (:mod:`services.jobs.outcomes`), the providers and prices
(:mod:`services.jobs.estimate_prices`), the estimate (:mod:`services.jobs.estimate`), and a
submit refused when the estimate's p90 is above the caller's limit."""

from __future__ import annotations

import asyncio
import math

from prospect.v1 import jobs_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, Reason
from services.common.money import micros_to_usd, usd_to_micros
from services.common.settings import Settings
from services.jobs.estimate import estimate
from services.jobs.estimate_prices import current_providers, price_model
from services.jobs.models import utcnow
from services.jobs.outcomes import Outcomes
from services.jobs.validation import BUDGET_MAX, BUDGET_MAX_MICROS


class Estimator:
    def __init__(self, settings: Settings, outcomes: Outcomes) -> None:
        self._settings = settings
        self._outcomes = outcomes

    async def estimate(
        self, user_id: str, config: jobs_pb2.CampaignConfig
    ) -> jobs_pb2.CampaignEstimate:
        """The estimate of ``user_id``'s validated ``config``; no provider is called."""
        history = await self._outcomes.history(user_id)
        names = current_providers(self._settings, history)
        prices = price_model(self._settings, names, config.verify_emails)
        # Some tens of milliseconds of arithmetic: off the event loop's thread.
        return await asyncio.to_thread(
            estimate,
            config,
            history,
            prices,
            cache_days=self._settings.enrichment_cache_days,
            now=utcnow(),
        )


def validate_max_estimated_cost(request: jobs_pb2.SubmitCampaignRequest) -> int:
    """The submit's ``max_estimated_cost`` in micro-dollars (0 = no check), given in either
    form or both (the same amount, as for the budget), else InvalidArgument naming
    ``max_estimated_cost_micros``."""
    usd, micros = request.max_estimated_cost, request.max_estimated_cost_micros
    if not math.isfinite(usd) or not 0 <= usd <= BUDGET_MAX:
        raise InvalidArgument(
            "max_estimated_cost", f"must be a finite amount between 0 and {BUDGET_MAX:,.0f} USD"
        )
    if not 0 <= micros <= BUDGET_MAX_MICROS:
        raise InvalidArgument(
            "max_estimated_cost_micros",
            f"must be between 0 and {BUDGET_MAX_MICROS:,} micro-dollars ({BUDGET_MAX:,.0f} USD)",
        )
    if micros and usd and usd_to_micros(usd) != micros:
        raise InvalidArgument(
            "max_estimated_cost_micros",
            f"is {micros:,} micro-dollars but max_estimated_cost is {usd!r} USD "
            f"({usd_to_micros(usd):,} micro-dollars): give one of the two, or both the same",
        )
    return micros or usd_to_micros(usd)


def check_limit(found: jobs_pb2.CampaignEstimate, limit_micros: int) -> None:
    """FailedPrecondition ESTIMATE_OVER_LIMIT, with the estimate in its details, when the
    estimate's p90 is above ``limit_micros``."""
    p90 = found.total.p90_micros
    if p90 <= limit_micros:
        return
    error = FailedPrecondition(
        f"the campaign's estimated cost (p90 ${micros_to_usd(p90):.2f}, p50 "
        f"${micros_to_usd(found.total.p50_micros):.2f}) is above max_estimated_cost "
        f"${micros_to_usd(limit_micros):.2f}",
        reason=Reason.ESTIMATE_OVER_LIMIT,
        metadata={
            "max_estimated_cost_micros": str(limit_micros),
            "p10_micros": str(found.total.p10_micros),
            "p50_micros": str(found.total.p50_micros),
            "p90_micros": str(p90),
        },
    )
    error.details = (found,)
    raise error
