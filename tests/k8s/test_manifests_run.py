"""The manifests run: overlays/dev rendered, and every Deployment's containers started as
local processes from their own command, arguments and environment (ConfigMap values as
rendered, Secret values from a fixture, Service names and ports mapped to loopback ports,
emptyDir mounts to temporary directories) beside a local nats-server run from the NATS
container's own configuration (its ConfigMap's files, the mounts' paths made local) and
environment (each service's user's password, from the Secret). Each service logs in as
its own NATS user. Readiness is the container's own probe (gRPC, or HTTP for the web
process). One campaign, with a token minted as a client would, reaches COMPLETED; the web
process answers its probes and serves that job over HTTP through its Service, from the
jobs API through the jobs Service; then the retention CronJob's container runs once. So
the manifests and the code agree on commands, environment names and ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from secrets import token_hex
from typing import Any, Self

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import NatsServer, ServiceProcess, free_port
from services.jobs import db
from services.jobs.auth import mint_token
from tests.k8s.manifests import (
    NATS_PASSWORD_KEYS,
    SECRET_NAME,
    Obj,
    container_env,
    containers,
    expand,
    is_app,
    label,
    matches,
    named,
    nats_blocks,
    nats_pod,
    nats_settings,
    of_kind,
    pod_template,
    rendered,
)

pytestmark = pytest.mark.e2e

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 60.0
# host:port in a setting: a listen address (0.0.0.0, [::]) or a Service name.
_ADDRESS = re.compile(r"(?<![\w.-])(0\.0\.0\.0|\[::\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?):(\d+)\b")
SERVING = health_pb2.HealthCheckResponse.SERVING


class ContainerProcess(ServiceProcess):
    """One container of a rendered pod, run here: its own argv and environment (only PATH
    is inherited), its declared ports mapped to local ones."""

    def __init__(
        self, label: str, argv: list[str], env: Mapping[str, str], log: Path, ports: dict[int, int]
    ) -> None:
        super().__init__(label, env, log, label=label)
        self.argv = argv
        self.ports = ports  # container port -> local port

    def start(self) -> Self:
        self._spawn(self.argv, self.env)
        return self

    def run_to_completion(self, timeout: float = 60.0) -> None:
        """Start, wait for the exit, fail the test unless it exited 0 (a Job, an init)."""
        self.start()
        deadline = time.monotonic() + timeout
        while self.is_running and time.monotonic() < deadline:
            time.sleep(0.05)
        code = self.stop(5)
        assert code == 0, f"{self.label} exited {code}:\n{self.log_tail()}"


class LocalCluster:
    """Where the overlay's pods, Services and volumes are on this machine."""

    def __init__(self, objects: list[Obj], secrets: Mapping[str, Mapping[str, str]], tmp: Path):
        self.objects, self.secrets, self.tmp = objects, secrets, tmp
        self.namespace = objects[-1]["metadata"].get("namespace", "default")
        self.pod_ports: dict[tuple[str, int], int] = {}  # (owner, container port) -> local
        self.addresses: dict[tuple[str, int], int | None] = {}  # (host, port) -> local

    def bind(self, owner: Obj, container_port: int, local_port: int) -> None:
        self.pod_ports[label(owner), container_port] = local_port

    def route_services(self) -> None:
        """Every Service name and port -> the local port of the container it targets (None
        when that pod does not run here, e.g. PostgreSQL when DATABASE_URL is replaced)."""
        for svc in of_kind(self.objects, "Service"):
            name, ns = svc["metadata"]["name"], self.namespace
            hosts = (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local")
            for owner in self.objects:
                template = pod_template(owner)
                if template and matches(svc["spec"]["selector"], template["metadata"]["labels"]):
                    for port in svc["spec"]["ports"]:
                        local = self.pod_ports.get((label(owner), target_port(owner, port)))
                        self.addresses.update({(host, port["port"]): local for host in hosts})

    def localize(
        self, name: str, value: str, ports: Mapping[int, int], mounts: Mapping[str, Path]
    ) -> str:
        """A setting as it must read here: addresses and mounted paths made local."""

        def address(m: re.Match[str]) -> str:
            host, port = m.group(1), int(m.group(2))
            if host in ("0.0.0.0", "[::]"):
                assert port in ports, f"{name}={value} listens on {port}, a port not declared"
                return f"{LOOPBACK}:{ports[port]}"
            if any(h == host for h, _ in self.addresses):
                local = self.addresses.get((host, port))
                assert local, f"{name}={value}: no Service port {host}:{port} runs here"
                return f"{LOOPBACK}:{local}"
            return m.group(0)

        value = _ADDRESS.sub(address, value)
        for mount, local_dir in mounts.items():
            if value == mount or value.startswith(mount + "/"):
                value = str(local_dir) + value[len(mount) :]
        return value

    def container(self, owner: Obj, container: Obj) -> ContainerProcess:
        """The process for one container of ``owner`` (not started)."""
        name = f"{owner['metadata']['name']}-{container['name']}"
        fields = {"metadata.name": name, "metadata.namespace": self.namespace}
        env = container_env(container, self.objects, self.secrets, fields)
        ports = {
            p["containerPort"]: self.pod_ports[label(owner), p["containerPort"]]
            for p in container.get("ports", [])
        }
        volumes = {v["name"]: v for v in (pod_template(owner) or {})["spec"].get("volumes", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            assert "emptyDir" in volumes[mount["name"]], f"{name}: only emptyDir mounts run here"
            mounts[mount["mountPath"]] = self.tmp / f"{name}-{mount['name']}"
            mounts[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
        env = {k: self.localize(k, v, ports, mounts) for k, v in env.items()}
        argv = [expand(a, env) for a in [*container["command"], *container.get("args", [])]]
        assert argv[0] == "python", f"{name}: the image's python runs the services: {argv}"
        image_env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}  # Dockerfile ENV
        env = {"PATH": os.environ.get("PATH", ""), **image_env, **env}
        return ContainerProcess(
            name, [sys.executable, *argv[1:]], env, self.tmp / f"{name}.log", ports
        )


def target_port(owner: Obj, service_port: Obj) -> int:
    """The container port a Service port reaches in ``owner``'s pods (by name or number)."""
    target = service_port.get("targetPort", service_port["port"])
    declared = [p for c in containers(owner) for p in c.get("ports", [])]
    (port,) = [
        p["containerPort"] for p in declared if target in (p.get("name"), p["containerPort"])
    ]
    return int(port)


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``url``: the status and the body (an error status is an answer too; a refused
    connection is 0)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def probe_passes(process: ContainerProcess, container: Obj, probe: Obj) -> bool:
    """Kubernetes' probe, run against the process's local port: the native gRPC one, or an
    httpGet (2xx or 3xx passes, as the kubelet has it) on a port given by name or number."""
    if "httpGet" in probe:
        action = probe["httpGet"]
        declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        port = declared.get(action["port"], action["port"])
        url = f"http://{LOOPBACK}:{process.ports[port]}{action.get('path', '/')}"
        status, _ = http_get(url)
        return 200 <= status < 400
    action = probe["grpc"]
    request = health_pb2.HealthCheckRequest(service=action.get("service", ""))
    with grpc.insecure_channel(f"{LOOPBACK}:{process.ports[action['port']]}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
        except grpc.RpcError:
            return False
    return bool(answer.status == SERVING)


def wait_ready(pending: list[tuple[ContainerProcess, Obj]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while pending:
        for process, _ in pending:
            assert process.is_running, f"{process.label} exited:\n{process.log_tail()}"
        pending = [(p, c) for p, c in pending if not probe_passes(p, c, c["readinessProbe"])]
        assert time.monotonic() < deadline, f"not ready: {[p.label for p, _ in pending]}\n" + (
            "\n".join(f"--- {p.label}\n{p.log_tail()}" for p, _ in pending)
        )
        time.sleep(0.2)


def run_campaign(addr: str, token: str) -> tuple[jobs_pb2.Job, list[jobs_pb2.Lead]]:
    metadata = [("authorization", f"Bearer {token}")]
    config = jobs_pb2.CampaignConfig(
        business_type="coffee shop", location="Portland, OR", max_results=3,
        min_confidence_score=40, verify_emails=True,
    )  # fmt: skip
    with grpc.insecure_channel(addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:  # the API is deployed with JWT auth
            stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        request = jobs_pb2.SubmitCampaignRequest(config=config)
        job_id = stub.SubmitCampaign(request, metadata=metadata, timeout=15).job_id
        job: Any = None
        watch = jobs_pb2.WatchJobRequest(job_id=job_id)
        for update in stub.WatchJob(watch, metadata=metadata, timeout=120):
            job = update.job
        leads = stub.ListLeads(jobs_pb2.ListLeadsRequest(job_id=job_id), metadata=metadata)
    return job, list(leads.leads)


async def _empty_postgres(url: str) -> None:
    engine = db.create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture
def secrets(tmp_path: Path) -> Iterator[dict[str, dict[str, str]]]:
    """prospect-secrets as an operator would create it: random values, and DATABASE_URL on
    a SQLite file here (or the empty $TEST_DATABASE_URL, as PostgreSQL runs in the cluster)."""
    database_url = f"sqlite:///{tmp_path / 'prospect.db'}"
    if TEST_DATABASE_URL:
        asyncio.run(_empty_postgres(TEST_DATABASE_URL))
        database_url = TEST_DATABASE_URL
    keys = ("AUTH_JWT_SECRET", "PAGE_TOKEN_SECRET", "POSTGRES_PASSWORD", *NATS_PASSWORD_KEYS)
    yield {SECRET_NAME: {**{key: token_hex(24) for key in keys}, "DATABASE_URL": database_url}}


def test_dev_overlay_runs_a_campaign(secrets: dict[str, dict[str, str]], tmp_path: Path) -> None:
    objects = rendered("overlays/dev")
    cluster = LocalCluster(objects, secrets, tmp_path)
    nats_set = named(objects, "StatefulSet", "nats")
    # nats-server with the config file its command names, as mounted (the pid file and the
    # store on the pod's volumes made local paths), and the container's environment.
    # NatsServer's flags put the client and monitoring ports on free local ports and the
    # store (-sd) in the directory the config names; nats-server refuses a store_dir in the
    # file beside -sd, so that one line is dropped. Nothing else is changed.
    argv, nats_env, _ = nats_pod(objects, secrets, tmp_path / "nats-0")
    config = Path(argv[argv.index("--config") + 1])
    (jetstream,) = nats_blocks(config.read_text(), "jetstream")
    store = nats_settings(jetstream)["store_dir"]
    text, dropped = re.subn(r"^[ \t]*store_dir[ \t]*[:=].*\n", "", config.read_text(), flags=re.M)
    assert dropped == 1, config.read_text()
    config.write_text(text)
    nats = NatsServer(store, config_file=config, env=nats_env)
    cluster.bind(nats_set, 4222, nats.port)
    cluster.bind(nats_set, 8222, nats.monitor_port)
    deployments = of_kind(objects, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {
        "prospect-jobs", "prospect-discovery", "prospect-enrichment", "prospect-web"
    }  # fmt: skip
    for deployment in deployments:
        for c in containers(deployment):
            assert is_app(c), f"{label(deployment)} runs {c['image']}: not runnable here"
            for port in c.get("ports", []):
                cluster.bind(deployment, port["containerPort"], free_port())
    cluster.route_services()
    running: list[ContainerProcess] = []
    try:
        nats.start()
        for deployment in deployments:  # one replica each; init containers first
            for init in (pod_template(deployment) or {})["spec"].get("initContainers", []):
                cluster.container(deployment, init).run_to_completion()
        pending = []
        for deployment in deployments:
            for c in containers(deployment, init=False):
                running.append(cluster.container(deployment, c).start())
                pending.append((running[-1], c))
        wait_ready(pending)

        jobs = next(p for p, c in pending if c["name"] == "jobs")
        issuer, audience = jobs.env.get("AUTH_JWT_ISSUER"), jobs.env.get("AUTH_JWT_AUDIENCE")
        secret = secrets[SECRET_NAME]["AUTH_JWT_SECRET"]
        token = mint_token(secret, "tester", issuer=issuer or None, audience=audience or None)
        api = cluster.addresses["prospect-jobs", 50051]
        job, leads = run_campaign(f"{LOOPBACK}:{api}", token)
        assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job
        assert leads and job.metrics.sandbox, job

        # The web process: every probe of its container passes, and through its Service
        # it serves the job from the jobs API (the caller's token passed on, none refused).
        web, web_container = next((p, c) for p, c in pending if c["name"] == "web")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe_passes(web, web_container, web_container[probe]), probe
        site = f"http://{LOOPBACK}:{cluster.addresses['prospect-web', 80]}"
        status, body = http_get(f"{site}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "SERVING"}), body
        status, body = http_get(f"{site}/v1/jobs/{job.id}")
        assert status == 401, body
        auth = {"Authorization": f"Bearer {token}"}
        status, body = http_get(f"{site}/v1/jobs/{job.id}", auth)
        assert status == 200, body
        assert json.loads(body)["status"] == "JOB_STATUS_COMPLETED", body
        status, body = http_get(f"{site}/v1/jobs/{job.id}/leads", auth)
        assert status == 200 and len(json.loads(body)["leads"]) == len(leads), body

        retention = named(objects, "CronJob", "prospect-retention")
        (retention_container,) = containers(retention)
        cluster.container(retention, retention_container).run_to_completion()
    finally:
        for process in running:
            process.terminate()
        codes = {process.label: process.stop(30) for process in running}
        nats.stop()
    assert set(codes.values()) == {0}, f"a service did not stop cleanly on SIGTERM: {codes}"
