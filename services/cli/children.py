"""Child processes of the local stack: spawned with their output in a log file, stopped
(SIGTERM, then SIGKILL) by whoever started them, and killed by an ``atexit`` hook if still
running when the interpreter exits (services/cli/stack.py, services/cli/nats_server.py).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
    _live.clear()


class StackError(RuntimeError):
    """A process of the stack failed to start, died, or did not become ready in time."""


def spawn_by_fork() -> None:
    """Make this process spawn its children by fork, not vfork: for the launchers of
    ``make up`` and ``make run``, which must outlive every signal sent to their group.

    The launcher of ``make up`` was seen dying of a SIGTERM sent to its group while it
    stopped (1 run in 12 of tests/e2e/test_make_up.py), with ``SigCgt`` 0 in its
    ``/proc`` status: its handlers gone. Two causes fit, and both are closed: a vfork
    child resets every caught signal before exec, which must not reach the parent but is
    cheap to rule out (none in 50 runs with fork); and a signal arriving after the clean-up,
    while the interpreter shuts down with the default handlers back (the launcher ignores
    them from then on: ``StopRequest.ignore_from_now_on``). Not for a process with gRPC
    threads running (the tests): gRPC's fork handlers can crash the child before its exec.
    """
    subprocess._USE_VFORK = False  # type: ignore[misc]  # CPython's switch (3.11+)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """One child process writing stdout and stderr to a log file (appended across restarts)."""

    def __init__(self, label: str, log_path: Path) -> None:
        self.label = label
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's output starts in the log

    def _spawn(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        if self.is_running:
            raise StackError(f"{self.label} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            # A new session keeps a terminal's Ctrl-C away from the children, so the launcher
            # stops them in order (services before NATS) instead of all at once.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=None if env is None else dict(env), cwd=REPO_ROOT,
                start_new_session=True)  # fmt: skip
        _live.add(self._proc)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM if running, without waiting (see :meth:`stop`)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        _live.discard(proc)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL at once (a crash, for fault-injection tests) and reap."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=10)
        _live.discard(proc)

    def log_text(self) -> str:
        """Everything this process (all its runs) has written so far."""
        return self.read_log().decode(errors="replace")

    def read_log(self, offset: int = 0) -> bytes:
        """The log's bytes from ``offset`` on (empty if there is no log yet)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read()
        except OSError:
            return b""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def _died(self, what: str) -> StackError:
        return StackError(
            f"{self.label} {what} (exit code {self.returncode}); log {self.log_path}:\n"
            f"{self.log_tail()}"
        )
