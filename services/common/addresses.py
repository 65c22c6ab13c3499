"""Listen addresses: whether one is reachable from this machine only."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(addr: str) -> bool:
    """Whether every address the host of ``addr`` (``host:port``, ``[v6]:port``) resolves
    to is a loopback one: ``localhost``, ``127.0.0.1``, ``[::1]`` are; ``0.0.0.0``, ``[::]``,
    an empty host, a name that resolves elsewhere (``127.evil.example``) or not at all are
    not."""
    host = addr.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return False
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        resolved = {ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found}
    except (OSError, UnicodeError, ValueError):
        return False
    return bool(resolved) and all(ip.is_loopback for ip in resolved)
