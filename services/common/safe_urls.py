"""Where prospect may send a request a user chose (a completion webhook's ``notify_url``):
the URL's rules, checked when it is given, and the addresses its host may resolve to,
checked again each time a request goes out.

A URL names a host; the host names addresses only when it is resolved, and may name
others a minute later (DNS rebinding). So a URL is checked twice: when it is given
(:func:`check_url`: https, no credentials, a bounded length, and a literal address that
is public), and at each request (:func:`resolve_public`: every address the name resolves
to must be public, and the request goes to one of those very addresses, never to the
name again). Hosts an operator allowlists (``WEBHOOK_ALLOWED_HOSTS``, for development and
tests) skip the https and address rules; nothing else does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata services, named in refusals (both are also link-local or private).
METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


class UnsafeUrl(ValueError):
    """A URL, or an address its host resolves to, that prospect will not send to; the
    message is the rule broken, safe to show the URL's owner."""


@dataclass(frozen=True)
class Target:
    """Where one request goes: the URL's host and port, and the vetted address to
    connect to (the request keeps the host for ``Host`` and TLS)."""

    host: str
    port: int
    address: IPAddress
    named: bool  # the host is a name (not an address): TLS is for that name


def allowed_hosts(text: str) -> frozenset[str]:
    """``WEBHOOK_ALLOWED_HOSTS`` (comma-separated host names or addresses) as a set of
    lower-case hosts, IPv6 addresses without brackets."""
    hosts = (h.strip().lower().removeprefix("[").removesuffix("]") for h in text.split(","))
    return frozenset(h for h in hosts if h)


def forbidden(address: IPAddress) -> str | None:
    """What kind of address ``address`` is when prospect must not send to it (loopback,
    private, link-local, multicast, reserved, unspecified, a cloud metadata service, or
    anything else not globally routable); None for a public address. An IPv6 address that
    carries an IPv4 one (IPv4-mapped, 6to4, Teredo) is judged by the IPv4 one as well."""
    if address in METADATA:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour):
            if inner is not None and (kind := forbidden(inner)):
                return kind
        if address.teredo is not None and (kind := forbidden(address.teredo[1])):
            return kind
    for kind, test in (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
    ):
        if test:
            return kind
    if not address.is_global:
        return "an address that is not public"
    return None


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` is written as, or None for a name. Raises :class:`UnsafeUrl`
    for an IPv4 address in a form other than four decimal parts (``2130706433``,
    ``0x7f.1``, ``127.1``): resolvers read those as addresses, and a rule should not
    depend on which one reads it."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return None
    raise UnsafeUrl("must write an IPv4 address as four decimal numbers (a.b.c.d)")


def check_url(
    url: str, allowed: Collection[str] = frozenset(), *, allow_http: bool = False
) -> None:
    """Raise :class:`UnsafeUrl` naming the first rule ``url`` breaks: at most
    :data:`MAX_URL_LENGTH` characters, printable, an absolute ``https://`` URL (``http``
    only to an allowed host, or anywhere with ``allow_http``: a business's website), no
    user name or password, and when its host is a literal address, a public one (unless
    allowed). A host name is checked at each request (:func:`resolve_public`)."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"must be at most {MAX_URL_LENGTH} characters")
    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise UnsafeUrl("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise UnsafeUrl(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise UnsafeUrl("must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("must not contain a user name or password")
    if port == 0:
        raise UnsafeUrl("must not name port 0")
    if host in allowed:
        return
    if parts.scheme != "https" and not allow_http:
        raise UnsafeUrl("must use https (http only for hosts in WEBHOOK_ALLOWED_HOSTS)")
    address = _literal(host)
    if address is not None and (kind := forbidden(address)):
        raise UnsafeUrl(f"must not name {kind}")


async def resolve_public(
    url: str, allowed: Collection[str] = frozenset(), *, allow_http: bool = False
) -> Target:
    """Where a request to ``url`` goes now: its host resolved, every address it resolves
    to public (else :class:`UnsafeUrl` naming what it found; an allowed host may resolve
    anywhere), and the first of them chosen. ``url`` is checked again first
    (:func:`check_url`): the rules may have changed since it was stored. ``localhost``
    and names under it are loopback without asking DNS (RFC 6761, 6.3)."""
    check_url(url, allowed, allow_http=allow_http)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _literal(host)
    if address is not None:
        return Target(host, port, address, named=False)
    if host == "localhost" or host.endswith(".localhost"):
        loopback = ipaddress.ip_address("127.0.0.1")
        if host not in allowed:
            raise UnsafeUrl(f"host {host} resolves to {forbidden(loopback)} ({loopback})")
        return Target(host, port, loopback, named=True)
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeUrl(f"host {host} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found]
    if not addresses:
        raise UnsafeUrl(f"host {host} does not resolve")
    if host not in allowed:
        for one in addresses:
            if kind := forbidden(one):
                raise UnsafeUrl(f"host {host} resolves to {kind} ({one})")
    return Target(host, port, addresses[0], named=True)
