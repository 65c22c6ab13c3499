"""EstimateCampaign and SubmitCampaign's ``max_estimated_cost``: the history read for the
caller (:mod:`services.jobs.outcomes`), the providers and prices
(:mod:`services.jobs.estimate_prices`), the estimate (:mod:`services.jobs.estimate`), and a
submit refused when the estimate's p90 is above the caller's limit."""

from __future__ import annotations

import asyncio

from prospect.v1 import jobs_pb2
from services.common.errors import FailedPrecondition, Reason
from services.common.money import micros_to_usd
from services.common.settings import Settings
from services.jobs.estimate import estimate
from services.jobs.estimate_prices import current_providers, price_model
from services.jobs.models import utcnow
from services.jobs.outcomes import Outcomes
from services.jobs.validation import validate_amount


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
    return validate_amount(
        request.max_estimated_cost, request.max_estimated_cost_micros, "max_estimated_cost"
    )


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
