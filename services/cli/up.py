"""``make up``: the local stack (services/cli/stack.py) in the foreground, its processes'
output followed, until a signal asks it to stop or a process of it fails."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import IO

from services.cli.stack import SERVICE_NAMES, WEB, Child, Stack, StackError, spawn_by_fork


def _follow(children: Iterable[Child], offsets: dict[str, int], out: IO[str]) -> None:
    """Copy new complete lines from each child's log to ``out``, prefixed by its label."""
    for child in children:
        chunk = child.read_log(offsets.get(child.label, 0))
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offsets[child.label] = offsets.get(child.label, 0) + len(complete)
        for line in complete.decode(errors="replace").splitlines():
            out.write(f"{child.label:>12} | {line}\n")
    out.flush()


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for printing)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP recorded, not raised: the first asks for a stop, and
    later ones (a second Ctrl-C; the SIGTERM that reaches every process of ``make up``'s
    process group, make and the launcher alike) cannot interrupt the clean-up under way."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)  # nothing else: no I/O inside a signal handler

    def requested(self) -> bool:
        return bool(self.received)

    def ignore_from_now_on(self) -> None:
        """Ignore these signals until the process exits: the clean-up is done, and a late
        one (a second Ctrl-C, the group's SIGTERM repeated) would otherwise arrive while
        the interpreter shuts down with the default handlers back, and kill it."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def main() -> int:
    """``make up``: the stack in the foreground until Ctrl-C or SIGTERM (exit 0), or until a
    process of it fails (exit 1). Data under ``$DATA_DIR`` (default ./data), the jobs API
    on ``$JOBS_GRPC_ADDR`` (default 127.0.0.1:50051), the database at ``$DATABASE_URL``
    (default a SQLite file in the data directory)."""
    from services.cli.render import stack_banner  # the library part needs no gRPC imports

    spawn_by_fork()
    stop = StopRequest()
    stop.install()  # from here on, a signal never raises: the loops below look for it
    stack = Stack(
        Path(os.environ.get("DATA_DIR") or "data"),
        jobs_addr=os.environ.get("JOBS_GRPC_ADDR") or "127.0.0.1:50051",
        web_addr=os.environ.get("WEB_ADDR") or "127.0.0.1:8080",
        database_url=os.environ.get("DATABASE_URL") or None,
        metrics=True,  # each process on a free port, printed in the banner
    )
    offsets: dict[str, int] = {}
    code = 0
    try:
        print(
            f"starting nats-server, {', '.join(SERVICE_NAMES)} and {WEB} "
            f"(data in {stack.data_dir}, logs in {stack.logs_dir})",
            flush=True,
        )
        offsets = {c.label: len(c.read_log()) for c in stack.children()}  # this run only
        stack.start(interrupted=stop.requested)
        _follow(stack.children(), offsets, sys.stdout)
        if not stop.requested():
            nats = stack.nats
            database = redact_url(stack.database_url)
            banner = stack_banner(
                stack.jobs_addr, nats.url, nats.monitor_url, database,
                web_url=stack.web_url, metrics_urls=stack.metrics_urls(),
            )  # fmt: skip
            print(banner, flush=True)
        while not stop.requested():
            _follow(stack.children(), offsets, sys.stdout)
            for child in stack.children():
                if not child.is_running:
                    raise child._died("exited unexpectedly")
            time.sleep(0.2)
        print(f"\n{signal.Signals(stop.received[0]).name}: stopping...", flush=True)
    except StackError as err:
        if not stop.requested():
            print(f"error: {err}", file=sys.stderr)
            code = 1
        else:  # a signal to the whole process group also reaches a child being spawned
            # (between its fork and its setsid): it died of the stop that was asked for.
            print(f"\n{signal.Signals(stop.received[0]).name}: stopping...", flush=True)
    finally:
        stack.stop()
        _follow(stack.children(), offsets, sys.stdout)
        stop.ignore_from_now_on()
    print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
