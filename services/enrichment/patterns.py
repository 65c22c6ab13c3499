"""The pattern step of the email waterfall: a domain's role addresses (ROLE_ADDRESSES,
``info@``, ``contact@``, ``hello@``), guessed only for a domain that receives mail.

"Receives mail" is its DNS MX record (:class:`DnsMx`: one query over UDP to MX_NAMESERVER
or the first nameserver of ``/etc/resolv.conf``; no MX, a null MX (RFC 7505), no such
domain, or no answer in time all mean no). MX_RESOLVER=none skips the check (every domain
is taken to receive mail), for networks without DNS. The guesses themselves cost nothing;
each is worth only what the verifier says of it, at the verifier's price
(services/enrichment/waterfall.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from pathlib import Path
from typing import Protocol

from services.common.settings import Settings

log = logging.getLogger(__name__)

MX, IN = 15, 1
_TIMEOUT_S = 3.0


class MxCheck(Protocol):
    """Whether a domain receives mail (the sandbox and tests have their own)."""

    async def accepts_mail(self, domain: str) -> bool: ...


def role_addresses(domain: str, roles: tuple[str, ...]) -> list[str]:
    """``role@domain`` for each role, in order."""
    return [f"{role}@{domain}" for role in roles]


class AnyMx:
    """MX_RESOLVER=none: every domain is taken to receive mail."""

    async def accepts_mail(self, domain: str) -> bool:
        return True


def mx_query(domain: str, query_id: int) -> bytes:
    """A DNS query (RFC 1035 4.1) for ``domain``'s MX records, recursion desired."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(label)]) + label for label in domain.encode("idna").split(b".") if label
    )
    return header + labels + b"\x00" + struct.pack("!HH", MX, IN)


def _skip_name(data: bytes, at: int) -> int:
    """The offset after the (possibly compressed) name at ``at``."""
    while True:
        length = data[at]
        if length & 0xC0 == 0xC0:
            return at + 2
        if length == 0:
            return at + 1
        at += 1 + length


def has_mx(answer: bytes, query_id: int) -> bool:
    """Whether ``answer`` (to :func:`mx_query` ``query_id``) holds an MX record other
    than a null MX (preference 0, exchange ".": RFC 7505 "no mail"). Raises ValueError
    for an answer that is not one to that query."""
    if len(answer) < 12:
        raise ValueError("short DNS answer")
    rid, flags, qdcount, ancount = struct.unpack("!HHHH", answer[:8])
    if rid != query_id or not flags & 0x8000:
        raise ValueError("not the answer to this query")
    if flags & 0x000F:  # NXDOMAIN, SERVFAIL...: no mail
        return False
    at = 12
    try:
        for _ in range(qdcount):
            at = _skip_name(answer, at) + 4
        for _ in range(ancount):
            at = _skip_name(answer, at)
            rtype, _rclass, _ttl, length = struct.unpack("!HHIH", answer[at : at + 10])
            at += 10
            rdata = answer[at : at + length]
            at += length
            if rtype == MX and not (rdata[:2] == b"\x00\x00" and rdata[2:3] == b"\x00"):
                return True
    except (IndexError, struct.error):
        raise ValueError("malformed DNS answer") from None
    return False


def system_nameserver() -> tuple[str, int]:
    """The first ``nameserver`` of /etc/resolv.conf (127.0.0.1 when there is none)."""
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1], 53
    except OSError:
        pass
    return "127.0.0.1", 53


class _Answer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.received.done():
            self.received.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.received.done():
            self.received.set_exception(exc)


class DnsMx:
    """MX_RESOLVER=dns: one UDP query per domain, answers kept for the process's life."""

    def __init__(self, nameserver: tuple[str, int], timeout_s: float = _TIMEOUT_S) -> None:
        self._nameserver = nameserver
        self._timeout_s = timeout_s
        self._known: dict[str, bool] = {}

    async def accepts_mail(self, domain: str) -> bool:
        if domain not in self._known:
            self._known[domain] = await self._ask(domain)
            if len(self._known) > 10_000:
                self._known.pop(next(iter(self._known)))
        return self._known[domain]

    async def _ask(self, domain: str) -> bool:
        query_id = secrets.randbelow(0x10000)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                _Answer, remote_addr=self._nameserver
            )
        except OSError as exc:
            log.warning("MX lookup of %s failed: %s", domain, exc)
            return False
        try:
            transport.sendto(mx_query(domain, query_id))
            async with asyncio.timeout(self._timeout_s):
                answer = await protocol.received
            return has_mx(answer, query_id)
        except (OSError, TimeoutError, ValueError, UnicodeError) as exc:
            log.info("MX lookup of %s gave no answer: %s", domain, exc)
            return False
        finally:
            transport.close()


def mx_check(settings: Settings) -> MxCheck:
    """The MX check MX_RESOLVER chooses."""
    if settings.mx_resolver == "none":
        return AnyMx()
    if settings.mx_nameserver:
        host, _, port = settings.mx_nameserver.rpartition(":")
        return DnsMx((host.strip("[]"), int(port)))
    return DnsMx(system_nameserver())
