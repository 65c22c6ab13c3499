"""With NATS_TLS_CA the services speak TLS to nats-server and check its certificate; a
server that requires TLS refuses a plain connection, and a certificate from another CA is
refused by the client."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from services.cli.stack import NatsServer, TlsFiles
from services.common import bus
from services.common.nats_auth import ENRICHMENT
from tests.certs import tls_secret


def write_tls(directory: Path, names: tuple[str, ...]) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    for name, pem in tls_secret(names).items():
        (directory / name).write_text(pem)
    return TlsFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", tls=write_tls(tmp_path / "tls", ("127.0.0.1",)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def connect_once(url: str, password: str, **options: Any) -> None:
    nc = await nats.connect(
        url, user=ENRICHMENT, password=password, max_reconnect_attempts=0,
        allow_reconnect=False, connect_timeout=3, **options,
    )  # fmt: skip
    await nc.close()


async def test_a_service_connects_over_tls_and_a_plain_client_is_refused(
    tls_server: NatsServer, tmp_path: Path
) -> None:
    assert tls_server.url.startswith("tls://")
    settings = tls_server.settings(ENRICHMENT)
    assert settings.nats_tls_ca
    nc = await bus.connect(settings, "test-tls")
    try:
        assert nc.is_connected and nc.connected_url is not None
        await nc.publish(bus.events_subject("job_" + "0" * 32), b"x")  # a report: allowed
        await nc.flush(timeout=5)
    finally:
        await nc.close()

    # The same client, the same password: fine over TLS with the right CA...
    await connect_once(tls_server.url, settings.nats_password, tls=bus.tls_context(settings))
    # ... never in plain text: the server demands TLS before anything else...
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        info = json.loads(sock.makefile().readline().removeprefix("INFO "))
    assert info["tls_required"] is True and info["auth_required"] is True
    # ... and refused by the client when the server's certificate is from another CA.
    other = write_tls(tmp_path / "other", ("127.0.0.1", "another.ca.example"))
    stranger = tls_server.settings(ENRICHMENT, nats_tls_ca=str(other.ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect_once(tls_server.url, settings.nats_password, tls=bus.tls_context(stranger))
