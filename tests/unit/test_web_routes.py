"""The web process's HTTP routes are the ``google.api.http`` options of the proto: one
route per RPC, and the proto and the router agree."""

from __future__ import annotations

import re

from aiohttp import web

from prospect.v1 import jobs_pb2
from services.web.app import _aiohttp_path, build_app, http_rules


def test_every_rpc_has_its_route_from_the_proto() -> None:
    rules = http_rules()
    service = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    assert set(rules) == {m.name for m in service.methods}
    assert rules["SubmitCampaign"] == ("POST", "/v1/campaigns")
    assert rules["CancelJob"] == ("POST", "/v1/jobs/{job_id}:cancel")
    assert rules["WatchJob"] == ("GET", "/v1/jobs/{job_id}/events")


def test_the_router_serves_exactly_those_routes() -> None:
    app = build_app(None, None, frozenset(), 1024)  # type: ignore[arg-type]  # routes only
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if isinstance(route.resource, web.Resource) and route.method != "HEAD"
    }
    for verb, template in http_rules().values():
        assert (verb, re.sub(r"\{(\w+)\}", r"{\1}", template)) in served, (verb, template)
    assert _aiohttp_path("/v1/jobs/{job_id}:cancel") == "/v1/jobs/{job_id:[^/:]+}:cancel"
