"""``prospect``: the command-line client of the jobs gRPC API.

Exit codes (:data:`EXIT_CODES`, also in ``prospect --help`` and the README): 0 success
(for ``watch`` and ``submit --watch``: the job COMPLETED), 1 a watched job ended FAILED or
CANCELLED, 2 a usage or local error or a gRPC error (printed as ``error: <CODE>:
<details>``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from google.protobuf.message import Message

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli import render
from services.cli.client import (
    WatchError,
    add_campaign_options,
    campaign_config,
    job_service,
    list_all_leads,
    watch_until_done,
)
from services.cli.estimate import add_estimate_parser
from services.cli.history import add_history_parsers
from services.cli.schedules import add_schedule_parser
from services.cli.webhooks import add_webhook_parsers
from services.common.settings import Settings
from services.jobs.auth import mint_token

DEFAULT_ADDR = "127.0.0.1:50051"
RPC_TIMEOUT = 30.0
STATUS_CHOICES = (
    "pending", "processing", "cancelling", "failing", "completed", "failed", "cancelled",
)  # fmt: skip
EXIT_CODES = """\
exit codes:
  0    success; for watch and submit --watch: the job ended COMPLETED
  1    watch, submit --watch: the job ended FAILED or CANCELLED
  2    a usage error (unknown option, bad value), a local error (token without
       $AUTH_JWT_SECRET, an --output file that cannot be written), or an error from
       the server, printed on stderr as "error: CODE: details" (NOT_FOUND,
       INVALID_ARGUMENT, FAILED_PRECONDITION, UNAVAILABLE: no server, or a watch
       that gave up reconnecting, ...)
  130  interrupted (Ctrl-C)
"""


def job_status(text: str) -> str:
    """``--status``: ``completed``, ``COMPLETED``, ``Completed`` or ``JOB_STATUS_COMPLETED``
    (any case) to the enum name ``JOB_STATUS_COMPLETED``."""
    name = text.strip().upper().removeprefix("JOB_STATUS_")
    if name.lower() not in STATUS_CHOICES:
        raise argparse.ArgumentTypeError(
            f"invalid status {text!r} (choose from {', '.join(STATUS_CHOICES)}; any case)"
        )
    return f"JOB_STATUS_{name}"


Command = Callable[[jobs_pb2_grpc.JobServiceStub, argparse.Namespace], Awaitable[int]]


def _emit(args: argparse.Namespace, message: Message, text: str) -> None:
    print(render.to_json(message) if args.json else text)


async def watch_job(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, *, as_json: bool = False, after: int = 0
) -> jobs_pb2.Job:
    """Show a job's updates until it ends (a live bar on a TTY); return the final job."""
    line = render.LiveLine()

    def on_update(update: jobs_pb2.JobUpdate) -> None:
        if as_json:
            print(render.to_json(update), flush=True)
        else:
            line.show(render.progress_line(update))

    def on_retry(reason: str, delay: float) -> None:
        if not as_json:
            line.note(f"connection lost ({reason}); resuming in {delay:.1f}s")
        else:
            print(f"resuming watch in {delay:.1f}s: {reason}", file=sys.stderr, flush=True)

    try:
        return await watch_until_done(
            stub, job_id, on_update, after_version=after, on_retry=on_retry
        )
    finally:
        line.finish()


def _exit_for(job: jobs_pb2.Job) -> int:
    return 0 if job.status == jobs_pb2.JOB_STATUS_COMPLETED else 1


async def cmd_submit(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    request = jobs_pb2.SubmitCampaignRequest(
        config=campaign_config(args), idempotency_key=args.idempotency_key
    )
    request.config.notify_url = args.notify_url
    request.max_estimated_cost = args.max_estimated_cost
    response = await stub.SubmitCampaign(request, timeout=RPC_TIMEOUT)
    _emit(
        args,
        response,
        f"submitted job {response.job_id} (campaign {response.campaign_id}, "
        f"{render.status_name(response.status)})",
    )
    if not args.watch:
        return 0
    job = await watch_job(stub, response.job_id, as_json=args.json)
    if not args.json:
        print(render.job_summary(job))
    leads = await list_all_leads(stub, job.id)
    if args.json and to_stdout(args):
        # The --json stream stays one JSON object per line: the leads are its last line.
        print(render.to_json({"leads": [render.to_dict(lead) for lead in leads]}), flush=True)
    else:
        if not args.json and to_stdout(args):
            print()
        output_leads(args, leads)
    return _exit_for(job)


async def cmd_watch(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    job = await watch_job(stub, args.job_id, as_json=args.json, after=args.after_version)
    if not args.json:
        print(render.job_summary(job))
    return _exit_for(job)


async def cmd_get(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    job = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=args.job_id), timeout=RPC_TIMEOUT)
    _emit(args, job, render.job_summary(job))
    return 0


async def cmd_cancel(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    job = await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=args.job_id), timeout=RPC_TIMEOUT)
    _emit(args, job, render.job_summary(job))
    return 0


async def cmd_list(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    request = jobs_pb2.ListJobsRequest(
        page_size=args.page_size, page_token=args.page_token, status=args.status
    )
    page = await stub.ListJobs(request, timeout=RPC_TIMEOUT)
    if args.json:
        print(render.to_json(page))
        return 0
    print(render.jobs_table(page.jobs) if page.jobs else "no jobs")
    if page.next_page_token:
        print(f"\nnext page: --page-token {page.next_page_token}")
    return 0


class OutputError(Exception):
    """The ``--output`` file could not be written (nothing was replaced)."""


def to_stdout(args: argparse.Namespace) -> bool:
    """Whether the leads go to stdout: no ``--output``, or ``--output -``."""
    return getattr(args, "output", None) in (None, "-")


def leads_format(args: argparse.Namespace) -> str:
    """``--format``, else json under ``--json``, else table."""
    fmt: str | None = args.format
    return fmt or ("json" if args.json else "table")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` all at once: into a new file
    beside it, flushed to disk, then renamed over it. A reader sees the old file or the new
    one, never half of it; on any failure the old file is left as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:  # mkstemp makes it 0600: keep the mode of the file replaced, else the umask's
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def output_leads(args: argparse.Namespace, leads: Sequence[jobs_pb2.Lead]) -> None:
    """The leads in the chosen format, on stdout or into ``--output`` (a note on stderr)."""
    document = render.leads_document(leads, leads_format(args))
    if to_stdout(args):
        if leads_format(args) == "csv":  # its bytes as they are: UTF-8, CRLF line ends
            sys.stdout.flush()
            sys.stdout.buffer.write(document.encode("utf-8"))
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(document)
            sys.stdout.flush()
        return
    try:
        write_atomically(Path(args.output), document)
    except OSError as err:  # a missing directory, no permission, a directory there...
        raise OutputError(f"cannot write {args.output}: {err.strerror or err}") from err
    print(f"wrote {len(leads)} leads to {args.output}", file=sys.stderr)


async def cmd_leads(stub: jobs_pb2_grpc.JobServiceStub, args: argparse.Namespace) -> int:
    leads = await list_all_leads(stub, args.job_id, page_size=args.page_size)
    output_leads(args, leads)
    return 0


def _add_leads_output(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--format",
        choices=render.LEAD_FORMATS,
        help=f"{what}: table, json (one array) or csv (RFC 4180, UTF-8, a header row); "
        "default json with --json, else table",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help=f"write {what} to FILE (- for stdout), replacing it atomically if it exists",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prospect",
        description="Command-line client of the prospect jobs gRPC API.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--addr",
        default=os.environ.get("JOBS_GRPC_ADDR") or DEFAULT_ADDR,
        help="jobs service host:port (default: $JOBS_GRPC_ADDR or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument(
        "--token",
        default=os.environ.get("PROSPECT_TOKEN") or None,
        help="bearer token for servers in jwt auth mode (default: $PROSPECT_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("PROSPECT_TLS_CA") or None,
        metavar="PEM",
        help="connect with TLS, trusting this CA certificate (default: $PROSPECT_TLS_CA)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="submit a lead discovery campaign")
    add_campaign_options(p)
    p.add_argument("--idempotency-key", default="", help="same key, same job")
    p.add_argument(
        "--max-estimated-cost",
        type=float,
        default=0.0,
        metavar="USD",
        help="refuse the job when its p90 cost estimate is above this (see estimate); 0 = none",
    )
    p.add_argument(
        "--notify-url",
        default="",
        metavar="URL",
        help="https URL that gets a signed POST when the job ends (see webhook-secret)",
    )
    p.add_argument(
        "--watch", action="store_true", help="watch the job to its end, then print its leads"
    )
    _add_leads_output(p, "with --watch, the leads")
    p.set_defaults(run=cmd_submit)

    p = sub.add_parser("watch", help="follow a job live until it ends")
    p.add_argument("job_id")
    p.add_argument("--after-version", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_watch)

    p = sub.add_parser("get", help="show one job")
    p.add_argument("job_id")
    p.set_defaults(run=cmd_get)

    p = sub.add_parser("list", help="list your jobs, newest first")
    p.add_argument(
        "--status",
        type=job_status,
        metavar="STATUS",
        help=f"only jobs in this status: {', '.join(STATUS_CHOICES)} (any case)",
    )
    p.add_argument("--page-size", type=int, default=20)
    p.add_argument("--page-token", default="")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(run=cmd_cancel)

    p = sub.add_parser("leads", help="the leads of a job")
    p.add_argument("job_id")
    p.add_argument("--page-size", type=int, default=100, help=argparse.SUPPRESS)
    _add_leads_output(p, "the leads")
    p.set_defaults(run=cmd_leads)

    p = sub.add_parser("token", help="mint a token for local use (HS256 with $AUTH_JWT_SECRET)")
    p.add_argument("--user", required=True, help="the user id (the token's sub)")
    p.add_argument("--role", choices=["service"], help="service: may submit on behalf of users")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (3600)")
    p.set_defaults(local=cmd_token)

    add_estimate_parser(sub)
    add_schedule_parser(sub)
    add_webhook_parsers(sub)
    add_history_parsers(sub, watch_job)
    return parser


def cmd_token(args: argparse.Namespace) -> int:
    """Print a token signed with AUTH_JWT_SECRET (and its issuer and audience, if set)."""
    secret = os.environ.get("AUTH_JWT_SECRET", "")
    if not secret:
        print("error: set AUTH_JWT_SECRET to the jobs service's secret", file=sys.stderr)
        return 2
    # The jobs service refuses a token that lives longer than this: say so now.
    longest = float(os.environ.get("AUTH_JWT_MAX_LIFETIME_S") or Settings().auth_jwt_max_lifetime_s)
    if not 0 < args.ttl <= longest:
        print(
            f"error: --ttl must be 1 to {longest:g} seconds (AUTH_JWT_MAX_LIFETIME_S)",
            file=sys.stderr,
        )
        return 2
    print(
        mint_token(
            secret,
            args.user,
            ttl_s=args.ttl,
            role=args.role,
            issuer=os.environ.get("AUTH_JWT_ISSUER") or None,
            audience=os.environ.get("AUTH_JWT_AUDIENCE") or None,
        )
    )
    return 0


async def _run(args: argparse.Namespace) -> int:
    command: Command = args.run
    async with job_service(args.addr, token=args.token, tls_ca=args.tls_ca) as stub:
        return await command(stub, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the checks across options argparse cannot make (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "submit" and not args.watch and (args.format or args.output):
        parser.error("submit: --format and --output apply to the leads of --watch")
    if (
        args.command == "submit"
        and args.json
        and to_stdout(args)
        and args.format in ("table", "csv")
    ):
        parser.error(
            f"submit --json prints one JSON document per line: --format {args.format} "
            "needs --output FILE"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if getattr(args, "local", None) is not None:
        code: int = args.local(args)
        return code
    if args.tls_ca and not os.path.isfile(args.tls_ca):
        print(f"error: --tls-ca {args.tls_ca}: no such file", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except grpc.aio.AioRpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    except WatchError as err:
        print(f"error: UNAVAILABLE: {err}", file=sys.stderr)
        return 2
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `prospect leads ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
