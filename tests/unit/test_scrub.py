"""Provider error text loses every form of a key a provider or a library may echo: base64
(alone or in ``user:key`` credentials) and pieces of a key cut short, besides the raw and
URL-encoded key."""

from __future__ import annotations

import base64
import binascii
import re

import pytest

from services.common.providers.http import PARTIAL_MIN, scrub

KEY = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"  # shaped like a Google key; not a real one
HEX_KEY = "0123456789abcdef0123456789abcdef01234567"  # shaped like a Hunter key

B64 = re.compile(r"[A-Za-z0-9+/_-]+")


def b64_variants(data: bytes) -> list[str]:
    std = base64.b64encode(data).decode()
    url = base64.urlsafe_b64encode(data).decode()
    return [std, std.rstrip("="), url, url.rstrip("=")]


def decodable_key_bytes(text: str, key: str) -> int:
    """The longest run of the key's bytes that base64-decoding any part of ``text`` (at any
    alignment, either alphabet) gives back: what an attacker reading ``text`` learns."""
    best = 0
    for run in B64.findall(text):
        for start in range(4):
            chunk = run[start:].replace("-", "+").replace("_", "/")
            chunk = chunk[: len(chunk) // 4 * 4]
            try:
                decoded = base64.b64decode(chunk)
            except (binascii.Error, ValueError):
                continue
            best = max(best, _longest_common(decoded, key.encode()))
    return best


def _longest_common(a: bytes, b: bytes) -> int:
    best = 0
    for i in range(len(a)):
        for j in range(len(b)):
            n = 0
            while i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
                n += 1
            best = max(best, n)
    return best


@pytest.mark.parametrize("key", [KEY, HEX_KEY])
@pytest.mark.parametrize(
    "credential",
    ["{key}", "{key}:", ":{key}", "api:{key}", "ap:{key}", "a:{key}", "user@example.com:{key}"],
)
def test_base64_of_the_key_alone_or_in_a_credential_is_scrubbed(key: str, credential: str) -> None:
    plain = credential.format(key=key).encode()
    for encoded in b64_variants(plain):
        text = f"401 Unauthorized; sent Authorization: Basic {encoded} (try again)"
        out = scrub(text, [key])
        assert "[redacted]" in out, out
        assert decodable_key_bytes(out, key) <= 2, out  # a byte or two at the seams, no more
        assert out.startswith("401 Unauthorized; sent Authorization: Basic ")
        assert out.endswith(" (try again)")


@pytest.mark.parametrize("key", [KEY, HEX_KEY])
def test_pieces_of_the_key_are_scrubbed(key: str) -> None:
    for cut in (PARTIAL_MIN, 12, len(key) - 1):
        out = scrub(f"Invalid API key '{key[:cut]}…'", [key])
        assert out == "Invalid API key '[redacted]…'"
        out = scrub(f"key ending {key[-cut:]}, middle {key[5 : 5 + cut]}", [key])
        assert out == "key ending [redacted], middle [redacted]"
    # Shorter than PARTIAL_MIN: ordinary text, kept (a key's every 3 characters are not news).
    short = key[: PARTIAL_MIN - 1]
    assert scrub(f"prefix {short} seen", [key]) == f"prefix {short} seen"


def test_the_base64_of_a_truncated_key_is_scrubbed() -> None:
    encoded = base64.b64encode(KEY.encode()).decode()[:20]  # a log line cut mid-way
    out = scrub(f"auth={encoded}", [KEY])
    assert out == "auth=[redacted]"
