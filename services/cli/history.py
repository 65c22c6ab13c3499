"""``prospect retry JOB`` and ``prospect history JOB``: run a failed or cancelled job again
(reusing what it paid for), and read a job's timeline."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Awaitable, Callable, Sequence

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli import render

RPC_TIMEOUT = 30.0
HISTORY_FORMATS = ("table", "json", "csv")
HISTORY_COLUMNS = ("at", "kind", "stage", "message")
# Shows a job's updates until it ends and returns it (services.cli.main.watch_job).
Watch = Callable[..., Awaitable[jobs_pb2.Job]]


def _at(event: jobs_pb2.JobEvent) -> str:
    return event.at.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def history_rows(events: Sequence[jobs_pb2.JobEvent]) -> list[list[str]]:
    return [
        [_at(e), e.kind, render.stage_name(e.stage), render.printable(e.message)] for e in events
    ]


def history_document(events: Sequence[jobs_pb2.JobEvent], fmt: str) -> str:
    """``events`` as a table, a JSON array, or CSV (a header row), ending with a newline."""
    rows = history_rows(events)
    if fmt == "json":
        return (
            json.dumps([dict(zip(HISTORY_COLUMNS, r, strict=True)) for r in rows], indent=2) + "\n"
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(HISTORY_COLUMNS)
        writer.writerows([render.neutralize_cell(cell) for cell in row] for row in rows)
        return out.getvalue()
    if not rows:
        return "no events\n"
    return render.table([c.upper() for c in HISTORY_COLUMNS], rows) + "\n"


async def all_events(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, page_size: int = 100
) -> list[jobs_pb2.JobEvent]:
    """Every entry of ``job_id``'s history, oldest first, page after page."""
    events: list[jobs_pb2.JobEvent] = []
    token = ""
    while True:
        request = jobs_pb2.ListJobEventsRequest(
            job_id=job_id, page_size=page_size, page_token=token
        )
        page = await stub.ListJobEvents(request, timeout=RPC_TIMEOUT)
        events += page.events
        token = page.next_page_token
        if not token:
            return events


async def cmd_history(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    events = await all_events(stub, args.job_id)
    fmt = args.format or ("json" if args.json else "table")
    print(history_document(events, fmt), end="")
    return 0


def _retry_command(watch: Watch) -> Callable[..., Awaitable[int]]:
    async def cmd_retry(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
        request = jobs_pb2.RetryJobRequest(job_id=args.job_id, idempotency_key=args.idempotency_key)
        response = await stub.RetryJob(request, timeout=RPC_TIMEOUT)
        if args.json:
            print(render.to_json(response), flush=True)
        else:
            print(
                f"retried job {args.job_id} as job {response.job_id} "
                f"({render.status_name(response.status)})"
            )
        if not args.watch:
            return 0
        job = await watch(stub, response.job_id, as_json=args.json)
        if not args.json:
            print(render.job_summary(job))
        return 0 if job.status == jobs_pb2.JOB_STATUS_COMPLETED else 1

    return cmd_retry


def add_history_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], watch: Watch
) -> None:
    """The ``retry`` and ``history`` commands (``watch`` follows a retry with --watch)."""
    p = sub.add_parser(
        "retry",
        help="run a failed or cancelled job again as a new job, reusing what it paid for",
    )
    p.add_argument("job_id")
    p.add_argument("--idempotency-key", default="", help="same key, same retry")
    p.add_argument("--watch", action="store_true", help="watch the new job to its end")
    p.set_defaults(run=_retry_command(watch))

    p = sub.add_parser("history", help="a job's timeline, oldest first")
    p.add_argument("job_id")
    p.add_argument(
        "--format",
        choices=HISTORY_FORMATS,
        help="table, json (one array) or csv (a header row); default json with --json, else table",
    )
    p.set_defaults(run=cmd_history)
