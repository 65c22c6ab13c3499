"""The stack launcher's NatsServer: a real nats-server with JetStream, kept across restarts.

The ``nats_server`` fixture (tests/conftest.py) starts one per test and always stops it.
"""

from __future__ import annotations

import socket

import nats
import pytest

from services.cli.stack import NatsServer, StackError, free_port, nats_server_binary


async def _connect(server: NatsServer) -> nats.NATS:
    settings = server.settings()  # the tests' superuser
    return await nats.connect(
        server.url,
        user=settings.nats_user,
        password=settings.nats_password,
        connect_timeout=5,
        max_reconnect_attempts=0,
    )


async def _publish_and_fetch(
    server: NatsServer, subject: str, payload: bytes, *, create: bool
) -> list:
    nc = await _connect(server)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish(subject, payload)
        assert ack.stream == "T"
        sub = await js.pull_subscribe(subject, durable=f"c-{subject.replace('.', '-')}")
        msgs = await sub.fetch(10, timeout=5)
        for msg in msgs:
            await msg.ack()
        return [msg.data for msg in msgs]
    finally:
        await nc.close()


def test_binary_and_free_port():
    assert nats_server_binary().endswith("nats-server")
    port = free_port()
    assert port not in (0, 4222)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # it really is free


async def test_jetstream_works_and_survives_restart(nats_server: NatsServer):
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.port != 4222
    assert await _publish_and_fetch(nats_server, "t.one", b"hello", create=True) == [b"hello"]

    port, pid = nats_server.port, nats_server.pid
    nats_server.restart()
    assert nats_server.is_running
    assert nats_server.pid != pid
    assert nats_server.port == port

    # The stream is still there (same store dir); a new connection publishes and fetches.
    assert await _publish_and_fetch(nats_server, "t.two", b"again", create=False) == [b"again"]


async def test_kill_then_restart(nats_server: NatsServer):
    nats_server.kill()
    assert not nats_server.is_running
    nats_server.restart()
    nc = await _connect(nats_server)
    try:
        assert nc.is_connected
    finally:
        await nc.close()


def test_stop_is_idempotent_and_log_written(tmp_path):
    server = NatsServer(tmp_path / "store")
    try:
        with server:
            assert server.is_running
        assert not server.is_running
        server.stop()
        assert "Server is ready" in server.log_text()
    finally:
        server.stop()


def test_start_fails_clearly_when_port_taken(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = NatsServer(tmp_path / "store", port=sock.getsockname()[1])
        try:
            with pytest.raises(StackError, match="nats-server"):
                server.start(timeout=10)
            assert not server.is_running
        finally:
            server.stop()
