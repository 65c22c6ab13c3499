"""End to end, the transport: with GRPC_TLS_CERT the jobs service serves the CLI and
clients that trust its certificate over TLS, and refuses plaintext and other CAs; with
AUTH_MODE=none it refuses to start on an address that is not loopback."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.cli.stack import NatsServer, ServiceProcess, Stack, free_port
from tests.e2e import tokens as t
from tests.e2e.secured_stack import SUBMIT_AND_WATCH
from tests.e2e.tokens import failure, run_cli

pytestmark = pytest.mark.e2e

Code = grpc.StatusCode


def test_tls_serves_the_cli_and_refuses_plaintext(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    cert, key = t.self_signed_cert(tmp_path)
    other_ca, _ = t.self_signed_cert(tmp_path / "ca")
    env = {"AUTH_MODE": "none", "SANDBOX_LATENCY_MS": "5"}
    env |= {"GRPC_TLS_CERT": str(cert), "GRPC_TLS_KEY": str(key)}
    with Stack(tmp_path / "stack", env=env) as running:
        addr = running.jobs_addr
        proc = run_cli("--addr", addr, "--tls-ca", str(cert), *SUBMIT_AND_WATCH)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "COMPLETED" in proc.stdout
        trusted = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(addr, trusted) as channel:
            assert t.health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        untrusted = grpc.ssl_channel_credentials(other_ca.read_bytes())
        for channel in (grpc.insecure_channel(addr), grpc.secure_channel(addr, untrusted)):
            with channel:
                assert failure(partial(t.health_status, channel))[0] == Code.UNAVAILABLE
        proc = run_cli("--addr", addr, "list")  # the CLI without --tls-ca
        assert proc.returncode == 2 and "UNAVAILABLE" in proc.stderr, proc.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_none_mode_refuses_a_non_loopback_bind(
    nats_server: NatsServer, tmp_path: Path, host: str
) -> None:
    env = {**nats_server.client_env("jobs"), "DATA_DIR": str(tmp_path), "AUTH_MODE": "none"}
    env |= {"JOBS_GRPC_ADDR": f"{host}:{free_port()}", "AUTH_JWT_SECRET": ""}
    proc = ServiceProcess("jobs", env, tmp_path / "jobs.log")
    try:
        proc.start()
        deadline = time.monotonic() + 60
        while proc.is_running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode not in (None, 0), proc.log_tail()
        log = proc.log_text()
        assert f"JOBS_GRPC_ADDR={host}:" in log and "AUTH_MODE" in log, log
    finally:
        proc.stop()
