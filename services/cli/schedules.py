"""``prospect schedule ...``: campaigns that run themselves (the schedule RPCs)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli import render
from services.cli.client import add_campaign_options, campaign_config

RPC_TIMEOUT = 30.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}

Command = Callable[[jobs_pb2_grpc.JobServiceStub, argparse.Namespace], Awaitable[int]]


def duration(text: str) -> timedelta:
    """``--every``: ``90s``, ``15m``, ``1h30m``, ``2d`` (a bare number is seconds)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 90s, 15m, 1h30m, 2d)")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def instant(text: str) -> datetime:
    """``--start``/``--end``: an ISO 8601 time; without an offset, UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r} (ISO 8601)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def create_request(args: argparse.Namespace) -> jobs_pb2.CreateScheduleRequest:
    spec = jobs_pb2.ScheduleSpec()
    if args.cron is not None:
        spec.cron = args.cron
        spec.time_zone = args.tz
    else:
        spec.interval.FromTimedelta(args.every)
    if args.start is not None:
        spec.start_time.CopyFrom(_ts(args.start))
    if args.end is not None:
        spec.end_time.CopyFrom(_ts(args.end))
    return jobs_pb2.CreateScheduleRequest(
        config=campaign_config(args),
        spec=spec,
        only_new_leads=args.only_new_leads,
        notify_url=args.notify_url,
        idempotency_key=args.idempotency_key,
    )


def when(spec: jobs_pb2.ScheduleSpec) -> str:
    """The spec in words: ``cron "0 9 * * MON-FRI" Europe/Paris`` or ``every 15m``."""
    if spec.WhichOneof("every") == "cron":
        return f'cron "{spec.cron}" {spec.time_zone or "UTC"}'
    seconds = spec.interval.ToTimedelta().total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {seconds // size:g}{unit}"
    return f"every {seconds:g}s"


def _time(ts: Timestamp) -> str:
    return ts.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def summary(schedule: jobs_pb2.Schedule) -> str:
    c = schedule.config
    lines = [
        f"schedule {schedule.schedule_id}: {c.business_type} in {c.location}, {when(schedule.spec)}"
        + (" (paused)" if schedule.paused else ""),
        f"  fired {schedule.fire_count} time(s)"
        + (f", last job {schedule.last_job_id}" if schedule.last_job_id else ""),
    ]
    if schedule.only_new_leads:
        lines.append("  only new leads")
    if schedule.notify_url:
        lines.append(f"  notify {schedule.notify_url}")
    nexts = [_time(t) for t in schedule.next_fire_times]
    lines.append("  next: " + (", ".join(nexts) if nexts else "none"))
    return "\n".join(lines)


def table(schedules: list[jobs_pb2.Schedule]) -> str:
    rows = [("SCHEDULE", "CAMPAIGN", "WHEN", "NEXT", "FIRES", "STATE")]
    for s in schedules:
        nxt = _time(s.next_fire_times[0]) if s.next_fire_times else "-"
        campaign = f"{s.config.business_type} in {s.config.location}"
        state = "paused" if s.paused else "active"
        rows.append((s.schedule_id, campaign, when(s.spec), nxt, str(s.fire_count), state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


def _emit(args: argparse.Namespace, message: Any, text: str) -> None:
    print(render.to_json(message) if args.json else text)


async def cmd_create(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    schedule = await stub.CreateSchedule(create_request(args), timeout=RPC_TIMEOUT)
    _emit(args, schedule, summary(schedule))
    return 0


def _ref(args: argparse.Namespace) -> jobs_pb2.ScheduleRef:
    return jobs_pb2.ScheduleRef(schedule_id=args.schedule_id)


async def cmd_get(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    request = jobs_pb2.GetScheduleRequest(schedule_id=args.schedule_id)
    schedule = await stub.GetSchedule(request, timeout=RPC_TIMEOUT)
    _emit(args, schedule, summary(schedule))
    return 0


async def cmd_list(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    request = jobs_pb2.ListSchedulesRequest(page_size=args.page_size, page_token=args.page_token)
    page = await stub.ListSchedules(request, timeout=RPC_TIMEOUT)
    if args.json:
        print(render.to_json(page))
        return 0
    print(table(list(page.schedules)) if page.schedules else "no schedules")
    if page.next_page_token:
        print(f"\nnext page: --page-token {page.next_page_token}")
    return 0


async def cmd_pause(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    schedule = await stub.PauseSchedule(_ref(args), timeout=RPC_TIMEOUT)
    _emit(args, schedule, summary(schedule))
    return 0


async def cmd_resume(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    schedule = await stub.ResumeSchedule(_ref(args), timeout=RPC_TIMEOUT)
    _emit(args, schedule, summary(schedule))
    return 0


async def cmd_delete(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    answer = await stub.DeleteSchedule(_ref(args), timeout=RPC_TIMEOUT)
    _emit(args, answer, f"deleted schedule {args.schedule_id}")
    return 0


async def cmd_trigger(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    response = await stub.TriggerSchedule(_ref(args), timeout=RPC_TIMEOUT)
    _emit(
        args,
        response,
        f"submitted job {response.job_id} (campaign {response.campaign_id}, "
        f"{render.status_name(response.status)})",
    )
    return 0


def add_schedule_parser(sub: Any) -> None:
    """``prospect schedule create|list|get|pause|resume|delete|trigger``."""
    parser = sub.add_parser("schedule", help="campaigns that run themselves")
    commands = parser.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")

    p = commands.add_parser("create", help="a campaign run on a cron schedule or an interval")
    add_campaign_options(p, per_run=True)
    every = p.add_mutually_exclusive_group(required=True)
    every.add_argument("--cron", metavar="EXPR", help='five fields, e.g. "0 9 * * MON-FRI"')
    every.add_argument("--every", type=duration, metavar="DURATION", help="e.g. 15m, 1h, 1d")
    p.add_argument("--tz", default="UTC", metavar="ZONE", help="IANA zone of --cron (UTC)")
    p.add_argument("--start", type=instant, metavar="ISO", help="no fire before this time")
    p.add_argument("--end", type=instant, metavar="ISO", help="no fire after this time")
    p.add_argument(
        "--only-new-leads",
        action="store_true",
        help="leave out places an earlier run already delivered (not enriched, not paid)",
    )
    p.add_argument("--notify-url", default="", metavar="URL", help="webhook for every job")
    p.add_argument("--idempotency-key", default="", help="same key, same schedule")
    p.set_defaults(run=cmd_create)

    p = commands.add_parser("list", help="list your schedules, newest first")
    p.add_argument("--page-size", type=int, default=20)
    p.add_argument("--page-token", default="")
    p.set_defaults(run=cmd_list)

    actions: list[tuple[str, str, Command]] = [
        ("get", "show one schedule and its next fire times", cmd_get),
        ("pause", "stop a schedule firing until resumed", cmd_pause),
        ("resume", "fire again, from the next fire time after now", cmd_resume),
        ("delete", "delete a schedule (the jobs it started stay)", cmd_delete),
        ("trigger", "run a schedule's campaign now", cmd_trigger),
    ]
    for name, help_text, run in actions:
        p = commands.add_parser(name, help=help_text)
        p.add_argument("schedule_id")
        p.set_defaults(run=run)
