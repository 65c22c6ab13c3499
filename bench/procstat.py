"""Resident memory and CPU time of processes, from ``/proc`` (Linux; no psutil)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Mapping

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
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


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
    running: the peak RSS of each, and the CPU each used over any span of the run."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.1) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.peak_mb = dict.fromkeys(self.pids, 0.0)
        self._cpu: list[tuple[float, dict[str, float]]] = []  # (time.monotonic(), cpu s)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak_mb[name] = max(self.peak_mb[name], rss_mb(pid))
        cpu = {n: cpu_s(p) for n, p in self.pids.items()}
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
        return {name: (cpu1[name] - cpu0[name]) / (t1 - t0) for name in self.pids}

    def others_share(self, start: float, end: float) -> float:
        """Cores the machine kept busy between ``start`` and ``end`` besides the processes
        sampled (another program, the kernel's own work): what disturbed the measurement.
        NaN without two samples in the span."""
        inside = [(t, cpu) for t, cpu in self._cpu if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return math.nan
        (t0, cpu0), (t1, cpu1) = inside[0], inside[-1]
        used = sum(cpu1[name] - cpu0[name] for name in self.pids)
        return max(0.0, (cpu1[MACHINE] - cpu0[MACHINE] - used) / (t1 - t0))
