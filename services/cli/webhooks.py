"""``prospect webhook-secret rotate`` and ``prospect deliveries``: completion webhooks'
signing secret and the attempts to deliver them (``submit --notify-url URL`` asks for one).
"""

from __future__ import annotations

import argparse
import sys

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli import render

RPC_TIMEOUT = 30.0


async def cmd_rotate(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    answer = await stub.RotateWebhookSecret(
        jobs_pb2.RotateWebhookSecretRequest(), timeout=RPC_TIMEOUT
    )
    if args.json:
        print(render.to_json(answer))
        return 0
    print(answer.secret)
    print(
        "keep it now: it is not shown again (rotate again for a new one). Verify each "
        "request's webhook-signature with it (Standard Webhooks).",
        file=sys.stderr,
    )
    return 0


def deliveries_table(deliveries: list[jobs_pb2.Delivery]) -> str:
    rows = [
        (
            d.at.ToDatetime().isoformat(timespec="seconds") + "Z",
            d.job_id,
            str(d.attempt),
            str(d.status_code or "-"),
            "delivered" if d.delivered else d.error,
        )
        for d in deliveries
    ]
    return render.table(("AT", "JOB", "ATTEMPT", "HTTP", "RESULT"), rows, right=(2, 3))


async def cmd_deliveries(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    request = jobs_pb2.ListDeliveriesRequest(
        job_id=args.job or "", page_size=args.page_size, page_token=args.page_token
    )
    page = await stub.ListDeliveries(request, timeout=RPC_TIMEOUT)
    if args.json:
        print(render.to_json(page))
        return 0
    print(deliveries_table(list(page.deliveries)) if page.deliveries else "no deliveries")
    if page.next_page_token:
        print(f"\nnext page: --page-token {page.next_page_token}")
    return 0


def add_webhook_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``webhook-secret`` and ``deliveries`` commands."""
    p = sub.add_parser("webhook-secret", help="the secret that signs your completion webhooks")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    rotate = actions.add_parser(
        "rotate", help="make a new secret (replacing the old one) and show it, this once"
    )
    rotate.set_defaults(run=cmd_rotate)

    p = sub.add_parser("deliveries", help="attempts to deliver your webhooks, newest first")
    p.add_argument("--job", metavar="JOB_ID", help="only this job's")
    p.add_argument("--page-size", type=int, default=20)
    p.add_argument("--page-token", default="")
    p.set_defaults(run=cmd_deliveries)
