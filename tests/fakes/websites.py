"""Fake business websites on loopback, for the email waterfall's website step.

One server answers for every domain of a :class:`FakeWorld` made with a ``website_port``
(virtual hosting by the ``Host`` header: ``www.<domain>`` or ``<domain>``): ``/robots.txt``
(closing the contact page to every robot on some sites), the home page (a link to the
contact page, sometimes the address), and the contact page (sometimes the address, as a
``mailto:`` link or as text, always next to an address at another domain that must be
ignored). A host the world does not know gets 404. Pages cost nothing; requests are
recorded like every fake's.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.base import FakeServer, Reply, RequestRecord
from tests.fakes.world import FakeWorld, normalize_domain

_HTML = {"Content-Type": "text/html; charset=utf-8"}


def _address(site: dict[str, Any]) -> str:
    email = site["email"]
    if site["how"] == "mailto":
        return f'<p>Write to <a href="mailto:{email}?subject=Hello">us</a>.</p>'
    return f"<p>Email: {email}</p>"


class FakeWebsites(FakeServer):
    """The websites of a :class:`FakeWorld`'s businesses; see the module docstring."""

    name = "websites"
    key_prefix = "web"

    def __init__(self, world: FakeWorld, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.world = world

    def job_of_request(self, req: RequestRecord) -> str:
        return self.world.job_of_domain(self._domain(req))

    @staticmethod
    def _domain(req: RequestRecord) -> str:
        return normalize_domain(req.header("host").rpartition(":")[0] or req.header("host"))

    def handle(self, req: RequestRecord) -> Reply:
        site = self.world.site_of(self._domain(req))
        if site is None:
            return Reply(404, b"no such site", _HTML)
        contact = site["contact_path"]
        if req.path == "/robots.txt":
            rules = f"Disallow: {contact}\n" if site["robots_blocks_contact"] else ""
            body = f"User-agent: *\n{rules}"
            return Reply(200, body.encode(), {"Content-Type": "text/plain"})
        if req.path in ("/", "/home"):
            shown = _address(site) if site["email"] and site["where"] == "home" else ""
            page = f'<html><body><h1>Welcome</h1>{shown}<a href="{contact}">Contact us</a>'
            page += "<script>var x = 'spam@" + self._domain(req) + "';</script></body></html>"
            return Reply(200, page.encode(), _HTML)
        if req.path == contact:
            shown = _address(site) if site["email"] and site["where"] == "contact" else ""
            page = f"<html><body><h1>Contact</h1>{shown}<p>Site by {site['foreign']}</p>"
            return Reply(200, (page + "</body></html>").encode(), _HTML)
        return Reply(404, b"<html>not found</html>", _HTML)
