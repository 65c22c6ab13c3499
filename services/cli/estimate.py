"""``prospect estimate``: what a campaign would find and cost (EstimateCampaign), before
submitting it; no provider is called."""

from __future__ import annotations

import argparse

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli import render
from services.cli.client import add_campaign_options, campaign_config

RPC_TIMEOUT = 30.0


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.4f}"


def estimate_text(e: jobs_pb2.CampaignEstimate) -> str:
    """The estimate as a table: expected counts, then the cost range per provider."""
    lines = [
        f"expected places          {e.expected_places:g}",
        f"expected qualified leads {e.expected_qualified_leads:g}",
        f"expected verified emails {e.expected_verified_emails:g}",
        "",
        f"{'cost':<16} {'p10':>12} {'p50':>12} {'p90':>12}",
    ]
    rows = [*sorted(e.by_provider.items()), ("total", e.total)]
    for name, r in rows:
        lines.append(
            f"{name:<16} {_usd(r.p10_micros):>12} {_usd(r.p50_micros):>12} {_usd(r.p90_micros):>12}"
        )
    lines += ["", f"basis: {e.basis}"]
    return "\n".join(lines)


async def cmd_estimate(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    request = jobs_pb2.EstimateCampaignRequest(config=campaign_config(args))
    answer = await stub.EstimateCampaign(request, timeout=RPC_TIMEOUT)
    print(render.to_json(answer) if args.json else estimate_text(answer))
    return 0


def add_estimate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``estimate BUSINESS_TYPE LOCATION [campaign options of submit]``."""
    p = sub.add_parser(
        "estimate", help="what a campaign would find and cost (p10/p50/p90), before submitting"
    )
    add_campaign_options(p)
    p.set_defaults(run=cmd_estimate)
