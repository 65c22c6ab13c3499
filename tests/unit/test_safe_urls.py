"""Addresses a webhook may reach, judged when a request goes out (names resolved)."""

from __future__ import annotations

import ipaddress

import pytest

from services.common import safe_urls


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254",
        "169.254.1.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "100.64.0.1",
        "::1", "::", "fc00::1", "fd00:ec2::254", "fe80::1", "ff02::1", "::ffff:127.0.0.1",
        "::ffff:169.254.169.254", "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)  # fmt: skip
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert safe_urls.forbidden(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_public_addresses_are_not(address: str) -> None:
    assert safe_urls.forbidden(ipaddress.ip_address(address)) is None


async def test_a_name_resolving_to_loopback_is_refused_at_delivery() -> None:
    with pytest.raises(safe_urls.UnsafeUrl, match="resolves to a loopback address"):
        await safe_urls.resolve_public("https://localhost:8443/hook")


async def test_an_allowed_name_resolves_anywhere_and_a_literal_is_not_resolved() -> None:
    target = await safe_urls.resolve_public("http://localhost:8080/x", {"localhost"})
    assert target.host == "localhost" and target.port == 8080 and target.named
    assert target.address.is_loopback
    target = await safe_urls.resolve_public("https://8.8.8.8/x")
    assert target == safe_urls.Target("8.8.8.8", 443, ipaddress.ip_address("8.8.8.8"), False)
    with pytest.raises(safe_urls.UnsafeUrl, match="must not name a private address"):
        await safe_urls.resolve_public("https://10.0.0.1/x")


def test_allowed_hosts_are_read_lower_case_without_brackets() -> None:
    assert safe_urls.allowed_hosts(" Localhost, [::1],,127.0.0.1 ") == frozenset(
        {"localhost", "::1", "127.0.0.1"}
    )
