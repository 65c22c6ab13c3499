"""Helper processes of the bench's reference scenarios (``python -m bench.<module> ...``):
started with a pipe on stdin that ends them when the bench goes, read line by line, and
killed and reaped at the end whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Mapping, Sequence


def exit_with_parent() -> None:
    """End this process when its parent closes our stdin (or dies): none outlives it."""

    def watch() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


async def spawn(module: str, env: Mapping[str, str], *args: str) -> asyncio.subprocess.Process:
    """``python -m <module> <args>`` in the repository, its stdout piped to the bench."""
    # Imported here: a helper process imports this module for exit_with_parent, and the
    # stack's module brings much of the services' code (a bare server's RSS is a figure).
    from services.cli.stack import REPO_ROOT

    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=dict(env),
        cwd=REPO_ROOT,
    )  # fmt: skip


async def line(proc: asyncio.subprocess.Process, role: str, within_s: float) -> str:
    """The next line ``proc`` prints; raises if it exits or stays silent first."""
    assert proc.stdout is not None
    read = await asyncio.wait_for(proc.stdout.readline(), within_s)
    if not read:
        raise RuntimeError(f"the {role} process exited ({await proc.wait()})")
    return read.decode().strip()


async def stop(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """Kill each process still running and reap it."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    for proc in procs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
