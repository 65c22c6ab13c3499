"""``prospect estimate``: what a campaign would find and cost (EstimateCampaign), before
submitting it; no provider is called."""

from __future__ import annotations

import argparse

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli import render
from services.cli.client import campaign_request

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
    config = campaign_request(
        args.business_type,
        args.location,
        max_results=args.max_results,
        min_score=args.min_score,
        budget=args.budget,
        verify_emails=not args.no_verify,
    ).config
    config.target_verified_emails = args.target_verified_emails
    request = jobs_pb2.EstimateCampaignRequest(config=config)
    answer = await stub.EstimateCampaign(request, timeout=RPC_TIMEOUT)
    print(render.to_json(answer) if args.json else estimate_text(answer))
    return 0


def add_estimate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``estimate BUSINESS_TYPE LOCATION [campaign options of submit]``."""
    p = sub.add_parser(
        "estimate", help="what a campaign would find and cost (p10/p50/p90), before submitting"
    )
    p.add_argument("business_type", help='e.g. "coffee shop"')
    p.add_argument("location", help='e.g. "Seattle, WA"')
    p.add_argument("--max-results", type=int, default=10, help="leads kept (default 10)")
    p.add_argument("--min-score", type=int, default=50, help="minimum score 0-100 (default 50)")
    p.add_argument("--budget", type=float, default=0.0, help="USD cap on spend; 0 = none")
    p.add_argument("--no-verify", action="store_true", help="do not verify emails")
    p.add_argument(
        "--target-verified-emails",
        type=int,
        default=0,
        metavar="N",
        help="stop enriching once N verified emails are in (0 = no goal)",
    )
    p.set_defaults(run=cmd_estimate)
