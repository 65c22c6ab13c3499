"""Normalizing names prospect derives from user or provider input.

:func:`domain_of` turns a business website into the bare domain an email finder expects;
:func:`type_slug` and :func:`type_words` turn a free-text business type into the place-type
vocabulary providers use ("Coffee Shops" -> ``coffee_shop``). The discovery worker (scoring),
the enrichment worker and the sandbox providers all share these, so they agree on names.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")
_WORD = re.compile(r"[a-z0-9]+")


def domain_of(website: str) -> str:
    """The lower-case host of ``website`` without scheme, ``www.``, port, path or query.

    Accepts full URLs ("https://www.Example.com:8443/about?x=1") and bare hosts
    ("example.com/contact"). Returns "" when there is no usable domain: empty input, no dot,
    an IP address, an email address, or characters a host name cannot hold.
    Internationalized names come back in their ASCII (punycode) form.
    """
    text = website.strip()
    if not text:
        return ""
    if "://" not in text:
        if "@" in text:
            return ""  # an email or "mailto:" address, not a website
        # Without a scheme urlsplit reads "example.com:80/x" as scheme "example.com".
        text = "//" + text.lstrip("/")
    try:
        host = urlsplit(text).hostname or ""
    except ValueError:
        return ""
    host = host.rstrip(".")
    if host.startswith("www."):
        host = host[4:]
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""
    host = host.lower()
    if not _DOMAIN.match(host) or all(label.isdigit() for label in host.split(".")):
        return ""
    return host


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def type_words(business_type: str) -> list[str]:
    """The lower-case, singular words of a business type: "Coffee Shops" -> [coffee, shop]."""
    return [_singular(word) for word in _WORD.findall(business_type.lower())]


def type_slug(business_type: str) -> str:
    """The place-type slug of a business type: "Coffee Shops" -> "coffee_shop"."""
    return "_".join(type_words(business_type))
