"""The website step's reader (services/enrichment/website.py): what it extracts, robots.txt,
the safety rules on every connection (redirects re-vetted), and its size and time bounds.
Sites are served on loopback by a tiny fake; the rules are lifted only for hosts listed in
WEBSITE_ALLOWED_HOSTS."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from services.common import safe_urls
from services.common.settings import Settings
from services.enrichment.website import (
    HostPatterns,
    WebsiteFetcher,
    contact_link,
    extract_emails,
)
from tests.fakes.base import FakeServer, Reply, RequestRecord

_HTML = {"Content-Type": "text/html"}


class Site(FakeServer):
    """One site: path -> reply, anything else 404."""

    name = "site"

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[str, Reply] = {}
        self.delay_s = 0.0

    def handle(self, req: RequestRecord) -> Reply:
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.pages.get(req.path, Reply(404, b"", _HTML))

    def html(self, path: str, body: str) -> None:
        self.pages[path] = Reply(200, body.encode(), _HTML)


@pytest.fixture
def site() -> Iterator[Site]:
    running = Site()
    with running:
        yield running


def fetcher(allowed: str = "127.0.0.1", **env: str) -> WebsiteFetcher:
    settings = Settings.from_env({"WEBSITE_ALLOWED_HOSTS": allowed, **env})
    return WebsiteFetcher(settings)


def test_extraction_keeps_mailto_and_visible_addresses_at_the_domain_only() -> None:
    page = """<html><body>
      <a href="mailto:Hello@Example.com?subject=Hi">Write</a>
      <p>Or sales@shop.example.com, or owner&#64;example.com.</p>
      <p>Built by studio@webagency.com; our@gmail.com</p>
      <script>var hidden = "robot@example.com";</script>
      <!-- old@example.com -->
      <a href="mailto:hello@example.com">again</a>
    </body></html>"""
    assert extract_emails(page, "example.com") == [
        "hello@example.com",
        "sales@shop.example.com",
        "owner@example.com",
    ]
    assert extract_emails(page, "other.com") == []
    assert extract_emails("x@notexample.com", "example.com") == []


@pytest.mark.parametrize(
    "written",
    [
        "info [at] example [dot] com",
        "info(at)example(dot)com",
        "info {at} example.com",
        "INFO AT EXAMPLE DOT COM",
        "info &#64; example.com",
        "info&#x40;example&#46;com",
    ],
)
def test_addresses_spelled_out_against_harvesters_are_read(written: str) -> None:
    page = f"<p>Write to {written} for bookings</p>"
    assert extract_emails(page, "example.com") == ["info@example.com"]
    elsewhere = re.sub("example", "elsewhere", page, flags=re.I)
    assert extract_emails(elsewhere, "example.com") == []


def test_words_that_are_not_an_address_are_not_read_as_one() -> None:
    page = "<p>Open at noon. Meet at the shop dot com corner; look at example</p>"
    assert extract_emails(page, "example.com") == []


def test_contact_link_is_the_first_on_the_same_host() -> None:
    page = """<a href="https://elsewhere.com/contact">Contact</a>
      <a href="mailto:x@example.com">contact</a>
      <a href="/about/reach-us">Contact us</a> <a href="/contact">contact</a>"""
    assert (
        contact_link(page, "https://www.example.com/") == "https://www.example.com/about/reach-us"
    )
    assert contact_link("<a href='/menu'>Menu</a>", "https://example.com/") == ""


def test_allowed_hosts_match_exactly_or_under_a_dotted_suffix() -> None:
    hosts = HostPatterns({"127.0.0.1", ".localhost"})
    assert "127.0.0.1" in hosts and "a.b.localhost" in hosts and "localhost" in hosts
    assert "127.0.0.2" not in hosts and "evil-localhost.com" not in hosts


async def test_home_and_contact_pages_are_read(site: Site) -> None:
    site.html("/", '<a href="/contact">Contact</a> <p>info@example.com</p>')
    site.html("/contact", '<a href="mailto:hello@example.com">mail</a>')
    found = await fetcher().emails(site.base_url, "example.com")
    assert found == ["info@example.com", "hello@example.com"]
    assert [r.path for r in site.requests] == ["/robots.txt", "/", "/contact"]
    assert {r.header("user-agent") for r in site.requests} == {"Mozilla/5.0 (compatible; prospect)"}


async def test_robots_txt_is_honoured(site: Site) -> None:
    site.html("/", "<p>no address here</p>")
    site.html("/contact", "<p>hello@example.com</p>")
    site.pages["/robots.txt"] = Reply(
        200, b"User-agent: prospect\nDisallow: /contact\n", {"Content-Type": "text/plain"}
    )
    assert await fetcher().emails(site.base_url, "example.com") == []
    assert "/contact" not in [r.path for r in site.requests]
    site.pages["/robots.txt"] = Reply(
        200, b"User-agent: *\nDisallow: /\n", {"Content-Type": "text/plain"}
    )
    site.reset()
    assert await fetcher().emails(site.base_url, "example.com") == []
    assert [r.path for r in site.requests] == ["/robots.txt"]


async def test_a_site_at_a_loopback_address_is_refused_without_the_allowlist(site: Site) -> None:
    site.html("/", "<p>info@example.com</p>")
    assert await fetcher(allowed="").emails(site.base_url, "example.com") == []
    assert site.requests == []
    with pytest.raises(safe_urls.UnsafeUrl, match="loopback"):
        await fetcher(allowed="").fetch(site.base_url + "/")


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.2/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
     "http://foo.localhost/", "file:///etc/passwd", "ftp://example.com/"],
)  # fmt: skip
async def test_each_redirect_is_vetted_again(site: Site, target: str) -> None:
    site.pages["/"] = Reply(302, b"", {"Location": target})
    with pytest.raises(safe_urls.UnsafeUrl):
        await fetcher().fetch(site.base_url + "/")


async def test_redirects_are_followed_at_most_the_limit(site: Site) -> None:
    for n in range(5):
        site.pages[f"/r{n}"] = Reply(302, b"", {"Location": f"/r{n + 1}"})
    site.html("/r5", "<p>info@example.com</p>")
    with pytest.raises(safe_urls.UnsafeUrl, match="more than 3 redirects"):
        await fetcher().fetch(site.base_url + "/r0")
    page = await fetcher(WEBSITE_MAX_REDIRECTS="5").fetch(site.base_url + "/r0")
    assert page.url.endswith("/r5") and "info@example.com" in page.text


async def test_pages_are_read_up_to_the_size_limit_and_within_the_time_limit(site: Site) -> None:
    site.html("/", "x" * 5000 + " late@example.com")
    page = await fetcher(WEBSITE_MAX_BYTES="4096").fetch(site.base_url + "/")
    assert len(page.text) == 4096 and "late@" not in page.text
    site.pages["/img"] = Reply(200, b"info@example.com", {"Content-Type": "image/png"})
    assert (await fetcher().fetch(site.base_url + "/img")).text == ""
    # A 50 MB page: the first WEBSITE_MAX_BYTES are read, then the connection is dropped.
    site.pages["/huge"] = Reply(200, b"<p>" + b"x" * (50 << 20) + b" last@example.com", _HTML)
    huge = await fetcher().fetch(site.base_url + "/huge")
    assert len(huge.text) == Settings.from_env({}).website_max_bytes
    assert "last@" not in huge.text
    # A site slower than WEBSITE_FETCH_TIMEOUT_S gives nothing (its address is in reach).
    site.html("/", "<p>late@example.com</p>")
    assert await fetcher().emails(site.base_url, "example.com") == ["late@example.com"]
    site.delay_s = 1.0
    assert await fetcher(WEBSITE_FETCH_TIMEOUT_S="0.2").emails(site.base_url, "example.com") == []
