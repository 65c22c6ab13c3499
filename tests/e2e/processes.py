"""What is still running, seen from /proc: for tests that a launcher stopped every process
it started."""

from __future__ import annotations

import os
from pathlib import Path


def processes_mentioning(needle: str) -> list[str]:
    """Live processes whose command line or environment contains ``needle`` (via /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours
            continue
        if state != "Z" and (needle.encode() in cmdline or needle.encode() in environ):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {argv}")
    return found


def environment_of(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with (empty if it is gone)."""
    try:
        raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}
