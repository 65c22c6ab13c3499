"""The website step of the email waterfall: addresses a business publishes on its own site.

Free (no provider bills it) but not harmless: the URL comes from a third party (the
place's listing), so every request is held to the rules a completion webhook is
(services/common/safe_urls.py), plus a few of its own:

- only ``http`` and ``https``; each connection goes to an address vetted at that moment
  (loopback, private, link-local and cloud metadata addresses refused, unless the host is
  in WEBSITE_ALLOWED_HOSTS, for development and tests), and to that very address, never
  to the name again;
- redirects are followed by hand, at most WEBSITE_MAX_REDIRECTS, each target checked
  and vetted again like the first;
- each page is read up to WEBSITE_MAX_BYTES within WEBSITE_FETCH_TIMEOUT_S, HTML or plain
  text only, and no script runs;
- ``robots.txt`` is honoured for the user agent ``prospect`` (a site that refuses it is
  not read at all; one without a readable robots.txt may be read).

Pages read: the home page, then one contact page (the first link on the home page, on the
same host, whose text or address says "contact"; else ``/contact``, then ``/contact-us``).
Addresses kept: those of ``mailto:`` links and those written out in the page's visible
text, at the business's domain or a subdomain of it, at most WEBSITE_CANDIDATES_MAX,
``mailto:`` ones first.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import httpx

from services.common import safe_urls
from services.common.plan import WEBSITE_CANDIDATES_MAX
from services.common.settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "prospect"
_HEADERS = {"user-agent": f"Mozilla/5.0 (compatible; {USER_AGENT})", "accept": "text/html"}
_TYPES = ("text/html", "text/plain", "application/xhtml+xml")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_EMAIL = re.compile(r"[a-z0-9][a-z0-9._%+-]{0,63}@[a-z0-9](?:[a-z0-9.-]{0,253}[a-z0-9])?", re.I)
_MAILTO = re.compile(r"""href\s*=\s*["']?\s*mailto:([^"'\s>?]+)""", re.I)
_LINK = re.compile(r"""<a\b[^>]*?href\s*=\s*["']([^"']+)["'][^>]*>(.*?)</a\s*>""", re.I | re.S)
_HIDDEN = re.compile(r"<(script|style|noscript|template)\b.*?</\1\s*>|<!--.*?-->", re.I | re.S)
_TAG = re.compile(r"<[^>]+>")
# Addresses written to fool harvesters, as sites do: "info [at] example [dot] com",
# "info(at)example(dot)com", "info {at} example.com", "info at example dot com". Only the
# business's own domain is kept afterwards, so a loose match costs nothing.
_AT = re.compile(r"\s*[\[({<]\s*at\s*[\])}>]\s*", re.I)
_DOT = re.compile(r"\s*[\[({<]\s*dot\s*[\])}>]\s*", re.I)
_SPACED_AT = re.compile(r"(?<=[a-z0-9])\s+@\s+(?=[a-z0-9])", re.I)
_SPELLED_DOT = re.compile(r"\s+dot\s+", re.I)
_SPELLED = re.compile(
    r"\b([a-z0-9][a-z0-9._%+-]*)\s+at\s+([a-z0-9-]+(?:\s+dot\s+[a-z0-9-]+)+)\b", re.I
)
CONTACT_PATHS = ("/contact", "/contact-us")


class HostPatterns(Collection[str]):
    """WEBSITE_ALLOWED_HOSTS as a collection ``in`` understands: an entry matches its
    host exactly, and an entry starting with a dot (``.localhost``) also every host under
    it."""

    def __init__(self, entries: Collection[str]) -> None:
        self._entries = frozenset(entries)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        host = host.lower()
        return host in self._entries or any(
            e.startswith(".") and (host.endswith(e) or host == e[1:]) for e in self._entries
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class Page:
    url: str  # where it was read, after redirects
    status: int
    text: str  # "" when not HTML or text


def at_domain(email: str, domain: str) -> bool:
    """Whether ``email`` is an address at ``domain`` or a subdomain of it."""
    host = email.rpartition("@")[2].lower().rstrip(".")
    return host == domain or host.endswith("." + domain)


def extract_emails(page: str, domain: str) -> list[str]:
    """The addresses at ``domain`` (or a subdomain) that ``page`` (HTML) links with
    ``mailto:`` or writes out in its visible text, plainly or spelled out ("info [at]
    example [dot] com"): lower-case, without repeats, links first. Scripts, styles and
    comments are not read."""
    found: list[str] = []
    for raw in _MAILTO.findall(page):
        found.extend(_EMAIL.findall(html.unescape(unquote(raw))))
    visible = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", page)))
    found.extend(_EMAIL.findall(visible))
    found.extend(_EMAIL.findall(_deobfuscated(visible)))
    out: list[str] = []
    for email in found:
        email = email.lower().strip(".")
        if at_domain(email, domain) and email not in out:
            out.append(email)
    return out


def _deobfuscated(text: str) -> str:
    """``text`` with the usual spelled-out forms of ``@`` and ``.`` written as such."""
    text = _DOT.sub(".", _AT.sub("@", _SPACED_AT.sub("@", text)))
    return _SPELLED.sub(_spelled_address, text)


def _spelled_address(match: re.Match[str]) -> str:
    return f"{match[1]}@{_SPELLED_DOT.sub('.', match[2])}"


def contact_link(page: str, base_url: str) -> str:
    """The first link of ``page`` on ``base_url``'s host whose text or address says
    "contact", made absolute; "" when there is none."""
    host = urlsplit(base_url).hostname
    for href, text in _LINK.findall(page):
        words = f"{href} {_TAG.sub(' ', text)}".lower()
        if "contact" not in words or href.lower().startswith(("mailto:", "tel:", "javascript:")):
            continue
        url = urljoin(base_url, html.unescape(href.strip())).partition("#")[0]
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname == host:
            return url
    return ""


class WebsiteFetcher:
    """Reads a business's pages under the rules of the module docstring."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self._timeout_s = settings.website_fetch_timeout_s
        self._max_bytes = settings.website_max_bytes
        self._max_redirects = settings.website_max_redirects
        self._allowed = HostPatterns(settings.website_hosts)
        self._client = client or httpx.AsyncClient(
            timeout=settings.website_fetch_timeout_s, follow_redirects=False, trust_env=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def emails(self, website: str, domain: str) -> list[str]:
        """Up to WEBSITE_CANDIDATES_MAX addresses at ``domain`` that ``website``'s home
        and contact pages publish; [] when the site cannot be read (refused by the safety
        rules, by its robots.txt, or not answering in time)."""
        try:
            return await self._emails(website, domain)
        except (safe_urls.UnsafeUrl, httpx.HTTPError, TimeoutError, UnicodeError) as exc:
            log.info("website of %s not read: %s", domain, exc)
            return []

    async def _emails(self, website: str, domain: str) -> list[str]:
        parts = urlsplit(website if "://" in website else f"https://{website}")
        scheme = parts.scheme if parts.scheme in ("http", "https") else "https"
        origin = f"{scheme}://{parts.netloc}"
        robots = await self._robots(origin)
        home_url = origin + "/"
        if not robots.can_fetch(USER_AGENT, home_url):
            return []
        home = await self.fetch(home_url)
        found = extract_emails(home.text, domain)
        link = contact_link(home.text, home.url)
        tries = [link] if link else [origin + path for path in CONTACT_PATHS]
        for url in tries:
            if len(found) >= WEBSITE_CANDIDATES_MAX:
                break
            if not robots.can_fetch(USER_AGENT, url):
                continue
            page = await self.fetch(url)
            if page.status == 200:
                found += [e for e in extract_emails(page.text, domain) if e not in found]
                break
        return found[:WEBSITE_CANDIDATES_MAX]

    async def _robots(self, origin: str) -> RobotFileParser:
        """The site's robots.txt rules: refused (401, 403) means nothing may be read;
        missing or unreadable means everything may (the robots.txt convention)."""
        parser = RobotFileParser()
        page = await self.fetch(origin + "/robots.txt", types=("text/plain", "text/html"))
        if page.status in (401, 403):
            parser.parse(["User-agent: *", "Disallow: /"])
        elif page.status == 200:
            parser.parse(page.text.splitlines())
        else:
            parser.parse([])
        return parser

    async def fetch(self, url: str, types: tuple[str, ...] = _TYPES) -> Page:
        """GET ``url``, following at most WEBSITE_MAX_REDIRECTS redirects, each target
        vetted; the body read up to WEBSITE_MAX_BYTES within WEBSITE_FETCH_TIMEOUT_S.
        Raises :class:`~services.common.safe_urls.UnsafeUrl` for a refused address or
        too many redirects, ``httpx.HTTPError`` or ``TimeoutError`` when the site fails."""
        for _ in range(self._max_redirects + 1):
            async with asyncio.timeout(self._timeout_s):
                status, location, text = await self._get(url, types)
            if status not in _REDIRECTS:
                return Page(url, status, text)
            if not location:
                return Page(url, status, "")
            url = urljoin(url, location).partition("#")[0]
        raise safe_urls.UnsafeUrl(f"more than {self._max_redirects} redirects")

    async def _get(self, url: str, types: tuple[str, ...]) -> tuple[int, str, str]:
        target = await safe_urls.resolve_public(url, self._allowed, allow_http=True)
        parsed = httpx.URL(url)
        pinned = parsed.copy_with(host=str(target.address))
        extensions = {}
        if parsed.scheme == "https" and target.named:
            extensions["sni_hostname"] = target.host
        headers = {**_HEADERS, "host": parsed.netloc.decode("ascii")}
        async with self._client.stream(
            "GET", pinned, headers=headers, extensions=extensions
        ) as response:
            location = response.headers.get("location", "")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if response.status_code != 200 or kind not in types:
                return response.status_code, location, ""
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= self._max_bytes:
                    del body[self._max_bytes :]
                    break
            charset = response.charset_encoding or "utf-8"
        try:
            text = body.decode(charset, errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        return response.status_code, location, text
