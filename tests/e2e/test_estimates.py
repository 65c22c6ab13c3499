"""EstimateCampaign end to end, on a real stack over the fake providers: an estimate calls
no provider (the fakes' request counts do not move), rests on priors at first and on the
campaigns run since after some; SubmitCampaign with a max_estimated_cost below the
estimate's p90 is refused FAILED_PRECONDITION with the estimate in its details, over gRPC
and over HTTP; the CLI's ``prospect estimate``."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from tests.e2e.cli import ok, run_cli
from tests.e2e.on_fakes import running_stack, wait_all_terminal
from tests.fakes import FakeProviders

pytestmark = pytest.mark.e2e

# The fakes serve no websites and no DNS: the email search alone (as before the waterfall).
ENV = {"EMAIL_WATERFALL": "hunter"}


def config(location: str, max_results: int = 6) -> jobs_pb2.CampaignConfig:
    return jobs_pb2.CampaignConfig(
        business_type="bakery", location=location, max_results=max_results,
        min_confidence_score=0, verify_emails=True,
    )  # fmt: skip


def requests_made(fakes: FakeProviders) -> int:
    return sum(len(fake.requests) for fake in fakes.fakes)


def ordered(e: jobs_pb2.CampaignEstimate) -> bool:
    return all(
        r.p10_micros <= r.p50_micros <= r.p90_micros for r in [e.total, *e.by_provider.values()]
    )


async def test_estimates_call_no_provider_learn_from_campaigns_and_guard_submits(
    tmp_path: Path,
) -> None:
    with FakeProviders(places_per_query=20) as fakes, running_stack(tmp_path, fakes, ENV) as stack:
        async with grpc.aio.insecure_channel(stack.jobs_addr) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            estimate = jobs_pb2.EstimateCampaignRequest(config=config("Estimate 0"))

            before = requests_made(fakes)
            first = await stub.EstimateCampaign(estimate, timeout=30)
            assert requests_made(fakes) == before == 0
            assert "no earlier campaigns" in first.basis, first.basis
            assert set(first.by_provider) == {"google_places", "hunter", "neverbounce"}
            assert ordered(first) and first.total.p90_micros > 0
            assert first.expected_places > 0 and first.expected_qualified_leads > 0

            submitted = [
                await stub.SubmitCampaign(jobs_pb2.SubmitCampaignRequest(config=config(f"Run {n}")))
                for n in range(3)
            ]
            jobs = await wait_all_terminal(stub, [s.job_id for s in submitted], within=90)
            assert all(j.status == jobs_pb2.JOB_STATUS_COMPLETED for j in jobs.values())

            before = requests_made(fakes)
            later = await stub.EstimateCampaign(estimate, timeout=30)
            assert requests_made(fakes) == before
            assert "3 earlier campaigns (3 of yours" in later.basis, later.basis
            assert ordered(later)
            actual = sorted(j.metrics.total_cost_micros for j in jobs.values())
            assert later.total.p10_micros <= actual[1] <= later.total.p90_micros

            # Refused above the limit, with the estimate in the details; no job is made.
            refused = jobs_pb2.SubmitCampaignRequest(
                config=config("Estimate 0"), max_estimated_cost_micros=1
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitCampaign(refused, timeout=30)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            status = rpc_status.from_call(err.value)
            assert status is not None
            info, detail = error_details_pb2.ErrorInfo(), jobs_pb2.CampaignEstimate()
            assert status.details[0].Unpack(info)
            assert info.reason == "ESTIMATE_OVER_LIMIT"
            assert int(info.metadata["p90_micros"]) == later.total.p90_micros
            assert any(d.Unpack(detail) for d in status.details)
            assert detail.total == later.total
            listed = await stub.ListJobs(jobs_pb2.ListJobsRequest())
            assert len(listed.jobs) == 3

            # Within the limit: accepted. Both forms disagreeing: INVALID_ARGUMENT.
            roomy = jobs_pb2.SubmitCampaignRequest(config=config("Roomy"), max_estimated_cost=100)
            accepted = await stub.SubmitCampaign(roomy, timeout=30)
            await wait_all_terminal(stub, [accepted.job_id], within=90)  # quiet fakes below
            both = jobs_pb2.SubmitCampaignRequest(
                config=config("Both"), max_estimated_cost=1.0, max_estimated_cost_micros=2
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitCampaign(both, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_estimated_cost_micros" in (err.value.details() or "")

            # The config is validated as SubmitCampaign validates it.
            bad = jobs_pb2.EstimateCampaignRequest(config=config("Bad", max_results=0))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.EstimateCampaign(bad, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "config.max_results" in (err.value.details() or "")

        async with httpx.AsyncClient(base_url=stack.web_url, timeout=60) as http:
            flat = {"businessType": "bakery", "location": "Estimate 0", "maxResults": 6,
                    "minConfidenceScore": 0, "verifyEmails": True}  # fmt: skip
            before = requests_made(fakes)
            for body in ({"config": flat}, flat):
                answer = await http.post("/v1/campaigns:estimate", json=body)
                assert answer.status_code == 200, answer.text
                data = answer.json()
                # The campaign submitted since may have joined the history: not the same
                # figures as above, the same shape.
                total = data["total"]
                assert (
                    0
                    < int(total["p10Micros"])
                    <= int(total["p50Micros"])
                    <= int(total["p90Micros"])
                )
                assert "earlier campaigns" in data["basis"]
            assert requests_made(fakes) == before
            answer = await http.post("/v1/campaigns", json={**flat, "maxEstimatedCost": 0.000001})
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["code"] == "FAILED_PRECONDITION"
            types = {d["@type"].rsplit("/", 1)[1]: d for d in error["details"]}
            assert types["google.rpc.ErrorInfo"]["reason"] == "ESTIMATE_OVER_LIMIT"
            shown = types["prospect.v1.CampaignEstimate"]
            p90 = types["google.rpc.ErrorInfo"]["metadata"]["p90_micros"]
            assert shown["total"]["p90Micros"] == p90 and int(p90) > 1

        cli = json.loads(ok(run_cli(stack.jobs_addr, "--json", "estimate", "bakery", "Estimate 0",
                                    "--max-results", "6", "--min-score", "0")))  # fmt: skip
        assert int(cli["total"]["p90_micros"]) > 0 and "earlier campaigns" in cli["basis"]
        table = ok(run_cli(stack.jobs_addr, "estimate", "bakery", "Estimate 0"))
        assert "expected qualified leads" in table and "total" in table and "basis:" in table
        refused_cli = run_cli(stack.jobs_addr, "submit", "bakery", "Estimate 9",
                              "--max-estimated-cost", "0.000001")  # fmt: skip
        assert refused_cli.returncode == 2
        assert "FAILED_PRECONDITION" in refused_cli.stderr
