"""AUTH_MODE=none listens on loopback only, and "loopback" means what the address resolves
to, not how it is spelled: a name is resolved and every address it gives must be loopback."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from services.common.addresses import is_loopback
from services.common.errors import ConfigError
from services.common.settings import Settings
from services.jobs.server import check_auth_mode

# Names a hostile resolver (or /etc/hosts) could answer; anything else is resolved for real.
FAKE_DNS = {
    "127.evil.example": ["203.0.113.7"],  # spelled like 127.x, resolves elsewhere
    "127.0.0.1.evil.example": ["203.0.113.8"],
    "127.mixed.example": ["127.0.0.1", "10.0.0.1"],  # one loopback address is not enough
    "localhost": ["10.9.8.7"],  # a hosts file that points localhost off the machine
    "devbox.internal": ["127.0.1.1", "::1"],  # loopback under another name
}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in FAKE_DNS:
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0))
            for ip in FAKE_DNS[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("fake_dns")
@pytest.mark.parametrize(
    "addr",
    [
        "127.evil.example:50051",
        "127.0.0.1.evil.example:50051",
        "127.mixed.example:50051",
        "localhost:50051",
        "127.no-such-name.invalid:50051",  # does not resolve at all
    ],
)
def test_names_are_resolved_not_read(addr: str) -> None:
    assert not is_loopback(addr)
    with pytest.raises(ConfigError, match=r"AUTH_MODE=none.*JOBS_GRPC_ADDR"):
        check_auth_mode(Settings.from_env({"JOBS_GRPC_ADDR": addr}))


@pytest.mark.usefixtures("fake_dns")
def test_a_name_that_resolves_to_loopback_only_is_loopback() -> None:
    assert is_loopback("devbox.internal:50051")
    check_auth_mode(Settings.from_env({"JOBS_GRPC_ADDR": "devbox.internal:50051"}))
