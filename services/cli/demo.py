"""``make run``: one demo campaign end to end on a fresh local stack.

Starts nats-server and the three services on free ports with data under ./data/demo
(wiped first), submits "coffee shop" in "Seattle, WA", shows its live progress, prints the
leads and a summary, and stops everything. Exits 0 only when the job COMPLETED.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import grpc

from prospect.v1 import jobs_pb2
from services.cli import render
from services.cli.client import WatchError, campaign_request, job_service, list_all_leads
from services.cli.main import watch_job
from services.cli.stack import Stack, StackError, spawn_by_fork

DEMO_DIR = Path("data") / "demo"
DEMO_LATENCY_MS = "250"  # slow enough to watch the bar move, fast enough to finish in seconds


async def run_demo_campaign(addr: str) -> tuple[jobs_pb2.Job, list[jobs_pb2.Lead]]:
    """Submit the demo campaign on ``addr``, watch it to the end, return it and its leads."""
    request = campaign_request(
        "coffee shop", "Seattle, WA", max_results=10, min_score=50, verify_emails=True
    )
    async with job_service(addr) as stub:
        response = await stub.SubmitCampaign(request, timeout=30)
        print(f"submitted job {response.job_id}: coffee shop in Seattle, WA (10 leads, score 50+)")
        job = await watch_job(stub, response.job_id)
        leads = await list_all_leads(stub, job.id)
    return job, leads


def _print_results(job: jobs_pb2.Job, leads: list[jobs_pb2.Lead], seconds: float) -> None:
    print()
    print(render.leads_table(leads) if leads else "no leads")
    print()
    print(render.job_summary(job))
    print(f"\nfinished in {seconds:.1f}s")


def main() -> int:
    spawn_by_fork()  # before any gRPC channel: the stack starts first
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # all stop and clean up
        signal.signal(sig, signal.default_int_handler)
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    env = {"SANDBOX_LATENCY_MS": os.environ.get("SANDBOX_LATENCY_MS") or DEMO_LATENCY_MS}
    stack = Stack(DEMO_DIR, env=env)
    failed = True
    try:
        print("starting nats-server, jobs, discovery, enrichment and web...", flush=True)
        started = time.monotonic()
        stack.start()
        print(
            f"ready in {time.monotonic() - started:.1f}s: web {stack.web_url}/, "
            f"jobs API {stack.jobs_addr}, "
            f"NATS {stack.nats_url}, data in {DEMO_DIR}/",
            flush=True,
        )
        started = time.monotonic()
        job, leads = asyncio.run(run_demo_campaign(stack.jobs_addr))
        _print_results(job, leads, time.monotonic() - started)
        failed = job.status != jobs_pb2.JOB_STATUS_COMPLETED
        if failed:
            print(f"\nthe job ended {render.status_name(job.status)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        stack.stop()
        return 130
    except grpc.aio.AioRpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
    except (StackError, WatchError) as err:
        print(f"error: {err}", file=sys.stderr)
    finally:
        stack.stop()
    if failed:
        print(f"\nservice logs (full logs in {stack.logs_dir}):", file=sys.stderr)
        print(stack.log_tails(lines=25), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
