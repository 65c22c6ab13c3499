"""The local stack: a real nats-server with JetStream and the three services as processes.

Shared by ``make up`` (``services.cli.up``), ``make run`` (``services.cli.demo``) and the
test suite. Every object that starts a process also stops it: :meth:`Stack.stop` stops all it
started even after a failed :meth:`Stack.start`, and an ``atexit`` hook kills any child
still running when the interpreter exits (services/cli/children.py). The nats-server is
services/cli/nats_server.py's; its names, and the child processes', are re-exported here,
where the launchers and the tests have always found them.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Self

from services.cli.children import (
    REPO_ROOT,
    Child,
    StackError,
    free_port,
    spawn_by_fork,
)
from services.cli.nats_server import NatsServer, TlsFiles, nats_server_binary
from services.common.nats_auth import JOBS

__all__ = [
    "REPO_ROOT",
    "SERVICE_NAMES",
    "WEB",
    "Child",
    "NatsServer",
    "ServiceProcess",
    "Stack",
    "StackError",
    "TlsFiles",
    "free_port",
    "nats_server_binary",
    "spawn_by_fork",
    "wait_all_ready",
]

SERVICE_NAMES = ("jobs", "discovery", "enrichment")
WEB = "web"  # the HTTP API and page: a client of the jobs API, never of NATS
_READY = re.compile(rb"\bready\b", re.IGNORECASE)


class ServiceProcess(Child):
    """``python -m services.<name>`` with the process environment plus ``env`` overrides."""

    def __init__(
        self, name: str, env: Mapping[str, str], log_path: str | Path, *, label: str | None = None
    ) -> None:
        super().__init__(label or name, Path(log_path))
        self.name = name
        self.env = dict(env)  # the overrides only

    @property
    def grpc_addr(self) -> str | None:
        """JOBS_GRPC_ADDR given to this process (meaningful for jobs replicas)."""
        return self.env.get("JOBS_GRPC_ADDR")

    @property
    def metrics_url(self) -> str:
        """Its Prometheus endpoint (``http://127.0.0.1:PORT/metrics``), "" when off."""
        addr = self.env.get("METRICS_ADDR", "")
        return f"http://{addr}/metrics" if addr else ""

    def start(self) -> Self:
        """Spawn the process (again, after it stopped); does not wait for readiness."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._spawn([sys.executable, "-m", f"services.{self.name}"], env)
        return self

    def is_ready(self) -> bool:
        """Whether this run logged its ready line; raises :class:`StackError` if it exited."""
        if any(_READY.search(line) for line in self.read_log(self._log_offset).splitlines()):
            return True
        if not self.is_running:
            raise self._died("exited before it was ready")
        return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the log shows a ``ready`` line; raises with the log tail otherwise."""
        wait_all_ready([self], timeout)

    def restart(self, timeout: float = 60.0) -> Self:
        self.stop()
        self.start()
        self.wait_ready(timeout)
        return self


def wait_all_ready(
    processes: Iterable[ServiceProcess],
    timeout: float = 60.0,
    *,
    interrupted: Callable[[], bool] | None = None,
) -> bool:
    """Wait for processes started together; the first to die or the deadline raises.

    True once all are ready; False as soon as ``interrupted()`` is true (a stop was asked
    for), without waiting for the rest.
    """
    pending = list(processes)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [p for p in pending if not p.is_ready()]
        if not pending:
            return True
        if interrupted is not None and interrupted():
            return False
        if time.monotonic() > deadline:
            p = pending[0]
            raise StackError(
                f"{p.label} not ready after {timeout}s; log {p.log_path}:\n{p.log_tail()}"
            )
        time.sleep(0.05)
    return True


def _text_logs() -> dict[str, str]:
    """LOG_FORMAT for the stack's services: the launcher's, else text (people read these
    logs through ``make up``, and readiness is a line of them), even where LOG_FORMAT=auto
    would choose json (a development container)."""
    return {"LOG_FORMAT": os.environ.get("LOG_FORMAT") or "text"}


class Stack:
    """NATS plus the jobs, discovery and enrichment services and the web process (HTTP on
    ``web_addr``), all on loopback.

    Layout of ``data_dir``: ``nats/`` (JetStream store), ``logs/<label>.log``, and
    ``prospect.db`` (the SQLite database unless ``database_url`` is given). Without a
    ``data_dir`` a temporary one is made and removed by :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        jobs_addr: str | None = None,
        web_addr: str | None = None,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        nats_port: int | None = None,
        ready_timeout: float = 60.0,
        metrics: bool = False,
    ) -> None:
        """``metrics``: every process serves Prometheus metrics on a free port of its own
        (METRICS_ADDR; see :meth:`metrics_urls`)."""
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="prospect-stack-")).resolve()
        self.logs_dir = self.data_dir / "logs"
        self.jobs_addr = jobs_addr or f"127.0.0.1:{free_port()}"
        self.web_addr = web_addr or f"127.0.0.1:{free_port()}"
        self.database_url = database_url or f"sqlite+aiosqlite:///{self.data_dir / 'prospect.db'}"
        self.extra_env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.metrics = metrics
        self.nats = NatsServer(
            self.data_dir / "nats", log_path=self.logs_dir / "nats-server.log", port=nats_port
        )
        self.processes: dict[str, ServiceProcess] = {}  # by label: jobs, discovery, jobs-2...
        # The web process, apart: ``processes`` are the NATS clients (the services).
        self.web: ServiceProcess | None = None

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def service_env(self, identity: str = JOBS) -> dict[str, str]:
        """The overrides a service connecting to NATS as ``identity`` gets (on top of the
        launcher's environment)."""
        return {
            **self.nats.client_env(identity),
            **_text_logs(),
            "DATABASE_URL": self.database_url,
            "DATA_DIR": str(self.data_dir),
            "JOBS_GRPC_ADDR": self.jobs_addr,
            **self.extra_env,
        }

    @property
    def web_url(self) -> str:
        """The web process's base URL (``http://127.0.0.1:8080``)."""
        return f"http://{self.web_addr}"

    def web_env(self) -> dict[str, str]:
        """The web process's overrides: the jobs API and its own address, and no NATS
        credentials at all (empty values hide any the launcher's environment has)."""
        no_nats = dict.fromkeys(("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS"), "")
        return {
            **no_nats,
            **_text_logs(),
            "DATA_DIR": str(self.data_dir),  # unused by it; names the stack it belongs to
            "JOBS_GRPC_ADDR": self.jobs_addr,
            "WEB_ADDR": self.web_addr,
            **self.extra_env,
        }

    def add_web(self, env: Mapping[str, str] | None = None) -> ServiceProcess:
        """Start the web process as :attr:`web` (not waiting for it to be ready)."""
        if self.web is not None and self.web.is_running:
            raise StackError(f"{WEB} is already running")
        env = {**self.web_env(), **self._metrics_env(), **(env or {})}
        self.web = ServiceProcess(WEB, env, self.logs_dir / "web.log")
        self.web.start()
        return self.web

    def add_service(
        self, name: str, *, label: str | None = None, env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        """Start one more ``services.<name>`` process (not waiting for it to be ready)."""
        label = label or name
        if label in self.processes and self.processes[label].is_running:
            raise StackError(f"{label} is already running")
        proc = ServiceProcess(
            name,
            {**self.service_env(name), **self._metrics_env(), **(env or {})},
            self.logs_dir / f"{label}.log",
            label=label,
        )
        self.processes[label] = proc
        proc.start()
        return proc

    def start(self, *, interrupted: Callable[[], bool] | None = None) -> Self:
        """Start NATS, then the three services and the web process together; return when
        all logged ``ready``, or as soon as ``interrupted()`` is true (then some may not be
        ready: stop them)."""
        try:
            self.nats.start()
            if interrupted is not None and interrupted():
                return self
            started = [self.add_service(name) for name in SERVICE_NAMES]
            started.append(self.add_web())
            wait_all_ready(started, self.ready_timeout, interrupted=interrupted)
        except BaseException:
            self.stop()
            raise
        return self

    def start_jobs_replica(self, addr: str | None = None, *, wait: bool = True) -> ServiceProcess:
        """Another jobs process on ``addr`` (default: a free port), sharing NATS and the DB.

        Its address is ``proc.grpc_addr``; it is stopped by :meth:`stop` like the others.
        """
        n = 2
        while f"jobs-{n}" in self.processes:
            n += 1
        addr = addr or f"127.0.0.1:{free_port()}"
        proc = self.add_service("jobs", label=f"jobs-{n}", env={"JOBS_GRPC_ADDR": addr})
        if wait:
            proc.wait_ready(self.ready_timeout)
        return proc

    def _metrics_env(self) -> dict[str, str]:
        """METRICS_ADDR on a free port for one more process, when metrics are on (kept
        across its restarts: it is in the process's env)."""
        return {"METRICS_ADDR": f"127.0.0.1:{free_port()}"} if self.metrics else {}

    def metrics_urls(self) -> dict[str, str]:
        """Each process's Prometheus endpoint by label (jobs, discovery, ..., web), for
        those serving one."""
        return {p.label: p.metrics_url for p in self._services() if p.metrics_url}

    def logs(self) -> dict[str, str]:
        """Full log text of every process, NATS included, by label."""
        out = {p.label: p.log_text() for p in self._services()}
        out[self.nats.label] = self.nats.log_text()
        return out

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every log, each under a header; for failure reports."""
        parts = [f"--- {p.label} ({p.log_path}) ---\n{p.log_tail(lines)}" for p in self.children()]
        return "\n".join(parts)

    def children(self) -> list[Child]:
        """Every process of the stack, NATS last."""
        return [*self._services(), self.nats]

    def _services(self) -> list[ServiceProcess]:
        """The services, then the web process."""
        return [*self.processes.values(), *([self.web] if self.web is not None else [])]

    def stop(self, grace: float = 10.0) -> None:
        """Stop every service (SIGTERM, SIGKILL after ``grace``), then NATS. Idempotent."""
        for proc in self._services():  # signal all first so they drain in parallel
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self._services():
            proc.stop(max(0.1, deadline - time.monotonic()))
        self.nats.stop(grace)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
