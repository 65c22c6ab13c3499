"""Resident memory and CPU time of processes, from ``/proc`` (Linux; no psutil)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping

_TICKS = os.sysconf("SC_CLK_TCK")
MACHINE = "(machine)"  # the whole machine's busy CPU, kept beside the processes' own


def rss_mb(pid: int) -> float:
    """Current resident set size (VmRSS) in MiB; 0.0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds used so far; 0.0 when the process is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # after "pid (comm) "


def postmaster_pid() -> int | None:
    """The PostgreSQL server running on this machine (its main process: a ``postgres``
    whose parent is not one); None when there is none."""
    names: dict[int, str] = {}
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        pid = int(entry)
        names[pid] = text[text.find("(") + 1 : text.rfind(")")]
        parents[pid] = int(text[text.rfind(")") + 2 :].split()[1])
    mains = [p for p, n in names.items() if n == "postgres" and names.get(parents[p]) != "postgres"]
    return min(mains) if mains else None


def server_cpu_s(main: int) -> float:
    """CPU seconds of a forking server (PostgreSQL: one process per connection) so far: its
    main process's own, its exited children's (the kernel adds a reaped child's CPU to its
    parent's cutime and cstime) and its live children's. 0.0 when it is gone."""
    fields = _stat_fields(main)
    if fields is None:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    try:
        with open(f"/proc/{main}/task/{main}/children") as children:
            kids = [int(pid) for pid in children.read().split()]
    except OSError:
        kids = []
    for kid in kids:
        kid_fields = _stat_fields(kid)
        if kid_fields is not None:
            ticks += int(kid_fields[11]) + int(kid_fields[12])
    return ticks / _TICKS


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy since boot (not idle nor
    waiting for I/O), from ``/proc/stat``: what all processes used, ours or not."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


class Sampler:
    """Samples the RSS and CPU time of named processes every ``interval`` seconds while
    running: the peak RSS of each, and the CPU each used over any span of the run; and the
    CPU of ``servers`` (name -> how to read their CPU seconds, e.g. :func:`server_cpu_s`
    of PostgreSQL's main process), counted among the processes but with no RSS."""

    def __init__(
        self,
        pids: Mapping[str, int],
        interval: float = 0.1,
        servers: Mapping[str, Callable[[], float]] | None = None,
    ) -> None:
        self.pids = dict(pids)
        self.servers = dict(servers or {})
        self.interval = interval
        self.peak_mb = dict.fromkeys(self.pids, 0.0)
        self._cpu: list[tuple[float, dict[str, float]]] = []  # (time.monotonic(), cpu s)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak_mb[name] = max(self.peak_mb[name], rss_mb(pid))
        cpu = {n: cpu_s(p) for n, p in self.pids.items()}
        cpu.update((name, read()) for name, read in self.servers.items())
        cpu[MACHINE] = machine_busy_s()
        self._cpu.append((time.monotonic(), cpu))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()

    def cpu_share(self, start: float, end: float) -> dict[str, float]:
        """Cores each process kept busy between ``start`` and ``end`` (1.0: one core),
        from the first sample at or after ``start`` to the last at or before ``end``."""
        inside = [(t, cpu) for t, cpu in self._cpu if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return {}
        (t0, cpu0), (t1, cpu1) = inside[0], inside[-1]
        return {name: (cpu1[name] - cpu0[name]) / (t1 - t0) for name in (*self.pids, *self.servers)}

    def others_share(self, start: float, end: float) -> float:
        """Cores the machine kept busy between ``start`` and ``end`` besides the processes
        sampled (another program, the kernel's own work): what disturbed the measurement.
        NaN without two samples in the span."""
        inside = [(t, cpu) for t, cpu in self._cpu if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return math.nan
        (t0, cpu0), (t1, cpu1) = inside[0], inside[-1]
        used = sum(cpu1[name] - cpu0[name] for name in (*self.pids, *self.servers))
        return max(0.0, (cpu1[MACHINE] - cpu0[MACHINE] - used) / (t1 - t0))
