"""nats-server run here as each overlay's nats-0 runs it (its command, mounted files and
environment): overlays/dev lets in each service with its own password and nobody else;
overlays/prod requires TLS, and each service logs in with only its mounted CA."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest
from nats.errors import Error as NatsError

from services.cli.stack import free_port
from services.common import bus
from services.common.nats_auth import IDENTITIES
from services.common.settings import Settings
from tests.k8s.manifests import (
    NATS_CLIENTS,
    SECRET_NAME,
    container_env,
    local_paths,
    nats_blocks,
    nats_pod,
    nats_secrets,
    rendered,
    volume_mounts,
)
from tests.k8s.nats_security import all_secrets, nats_conf, service_container


@contextmanager
def running_nats(target: str, tmp: Path, secrets: Mapping[str, Mapping[str, str]]) -> Iterator[int]:
    """nats-server as the overlay's nats-0 runs it (its command, mounted files and
    environment), on free local ports: the client port is yielded. Flags move the
    listeners to loopback (client, monitoring, and the cluster's when there is one)."""
    objects = rendered(target)
    argv, env, _ = nats_pod(objects, secrets, tmp)
    port, log = free_port(), tmp / "nats-server.log"
    argv += ["-a", "127.0.0.1", "-p", str(port), "-m", str(free_port()), "-l", str(log)]
    if nats_blocks(nats_conf(objects), "cluster"):
        argv += ["--cluster", f"nats://127.0.0.1:{free_port()}"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 15
        while not (log.exists() and "Server is ready" in log.read_text()):
            assert proc.poll() is None, f"nats-server exited: {proc.stderr and proc.stderr.read()}"
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


async def _login(url: str, **options: Any) -> None:
    async def quiet(_: Exception) -> None:
        pass

    nc = await nats.connect(
        url, allow_reconnect=False, connect_timeout=5, error_cb=quiet, **options
    )
    try:
        await nc.flush(timeout=5)
    finally:
        await nc.close()


@pytest.mark.e2e
def test_dev_nats_refuses_whoever_has_not_a_services_password(tmp_path: Path) -> None:
    """overlays/dev's nats-server lets each service in with its own password, and nobody
    without credentials, with a wrong password, or with another user's password."""
    secrets = nats_secrets()
    passwords = secrets[SECRET_NAME]
    with running_nats("overlays/dev", tmp_path, secrets) as port:
        url = f"nats://127.0.0.1:{port}"
        for user, identity in IDENTITIES.items():
            asyncio.run(_login(url, user=user, password=passwords[identity.password_env]))
        other = passwords[IDENTITIES["discovery"].password_env]
        for options in ({}, {"user": "jobs", "password": "wrong"},
                        {"user": "jobs", "password": other}):  # fmt: skip
            with pytest.raises(NatsError, match="Authorization Violation"):
                asyncio.run(_login(url, **options))


@pytest.mark.e2e
def test_prod_nats_serves_the_services_over_tls_only(tmp_path: Path) -> None:
    """overlays/prod's nats-server, with a certificate issued for the example
    Certificate's names, tells every client TLS is required; each service, with only its
    mounted ca.crt (its own TLS context, bus.tls_context) and its user, logs in over TLS to
    the host of its NATS_URL; a client that does not trust that CA cannot."""
    prod = rendered("overlays/prod")
    secrets = all_secrets(prod)
    with running_nats("overlays/prod", tmp_path / "nats-0", secrets) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            info = raw.makefile("rb").readline().decode()
        assert info.startswith("INFO ") and json.loads(info[5:])["tls_required"] is True
        for deployment in NATS_CLIENTS:
            obj, c = service_container(prod, deployment)
            env = container_env(c, prod, secrets)
            mounts = volume_mounts(obj, c, prod, secrets, tmp_path / deployment)
            nats_env = {k: local_paths(v, mounts) for k, v in env.items() if k.startswith("NATS_")}
            url = urlsplit(nats_env.pop("NATS_URL"))
            settings = Settings.from_env(nats_env)
            asyncio.run(
                _login(
                    f"tls://127.0.0.1:{port}",
                    user=settings.nats_user,
                    password=settings.nats_password,
                    tls=bus.tls_context(settings),
                    tls_hostname=url.hostname,
                )
            )
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(
                _login(
                    f"tls://127.0.0.1:{port}",
                    user=settings.nats_user,
                    password=settings.nats_password,
                    tls=ssl.create_default_context(),
                    tls_hostname=url.hostname,
                )
            )
