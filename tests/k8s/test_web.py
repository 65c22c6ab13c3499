"""The web process's manifests: its Deployment runs ``python -m services.web`` with HTTP
probes, holds no NATS, database or provider credentials, and may talk to nothing but the
jobs API (and DNS); the jobs API admits it; its Service and the prod Ingress template meet
its port. (tests/k8s/test_manifests_run.py runs its container and calls it over HTTP.)"""

from __future__ import annotations

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services.web.sse import HEARTBEAT_S
from tests.k8s.manifests import (
    K8S_DIR,
    KUBERNETES_VERSION,
    SECRET_SETTINGS,
    TARGETS,
    Obj,
    containers,
    generated,
    is_app,
    label,
    matches,
    named,
    of_kind,
    pod_labels,
    pod_template,
    rendered,
)

WEB = "prospect-web"
JOBS = "prospect-jobs"
INGRESS_EXAMPLE = K8S_DIR / "overlays" / "prod" / "web-ingress.example.yaml"
DNS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def web_container(objects: list[Obj]) -> Obj:
    (container,) = containers(named(objects, "Deployment", WEB))
    return container


def config_keys(objects: list[Obj]) -> set[str]:
    return set(generated(objects, "ConfigMap", "prospect-config")["data"])


def pod_labels_of(objects: list[Obj], deployment: str) -> dict[str, str]:
    return dict(
        (pod_template(named(objects, "Deployment", deployment)) or {})["metadata"]["labels"]
    )


def grpc_port(objects: list[Obj]) -> int:
    (jobs,) = containers(named(objects, "Deployment", JOBS), init=False)
    (port,) = [p["containerPort"] for p in jobs["ports"] if p["name"] == "grpc"]
    return int(port)


def policies_selecting(objects: list[Obj], labels: dict[str, str]) -> list[Obj]:
    return [
        p for p in of_kind(objects, "NetworkPolicy") if matches(p["spec"]["podSelector"], labels)
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_web_runs_the_web_process_on_8080_against_the_jobs_service(target: str) -> None:
    objects = rendered(target)
    c = web_container(objects)
    assert is_app(c) and c["command"] == ["python", "-m", "services.web"], c
    # HTTP, and Prometheus metrics (test_monitoring.py checks the metrics port everywhere).
    ports = [(p["name"], p["containerPort"]) for p in c["ports"]]
    assert ports == [("http", 8080), ("metrics", 9464)], ports
    env = {v["name"]: v.get("value") for v in c["env"]}
    assert env["WEB_ADDR"] == "0.0.0.0:8080"
    assert env["AUTH_MODE"] == "jwt", "off loopback the web process refuses AUTH_MODE=none"
    jobs_service = named(objects, "Service", JOBS)
    ports = [p["port"] for p in jobs_service["spec"]["ports"] if p["name"] == "grpc"]
    assert env["JOBS_GRPC_ADDR"] == f"{JOBS}:{ports[0]}"
    assert [r["configMapRef"]["name"] for r in c["envFrom"]] == [
        generated(objects, "ConfigMap", "prospect-config")["metadata"]["name"]
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_web_probes_answer_over_http(target: str) -> None:
    """Ready on /healthz (the channel to the jobs API is up); started and alive on a path
    this process answers alone, so an outage of the jobs API restarts no web pod."""
    c = web_container(rendered(target))
    probes = {
        name: c[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    for name, action in probes.items():
        assert action["port"] == "http", name
    assert probes["readinessProbe"]["path"] == "/healthz"
    for name in ("startupProbe", "livenessProbe"):
        assert probes[name]["path"] != "/healthz", f"{name} would hang on the jobs API"
    # /healthz waits up to 2 s for the channel: the probe waits longer.
    assert c["readinessProbe"]["timeoutSeconds"] > 2


@pytest.mark.parametrize("target", TARGETS)
def test_web_holds_no_credentials(target: str) -> None:
    """No NATS user, database URL, provider key or token key: nothing from a Secret (it
    checks no token, settings.verifies_tokens=False) and no Secret mounted (prod's NATS CA)."""
    objects = rendered(target)
    deployment = named(objects, "Deployment", WEB)
    c = web_container(objects)
    assert all("configMapRef" in ref for ref in c.get("envFrom", [])), "no Secret as envFrom"
    for var in c.get("env", []):
        assert "valueFrom" not in var, f"{var['name']}: the web process reads no Secret"
        name = var["name"]
        assert name not in SECRET_SETTINGS and not name.startswith("NATS_"), name
    volumes = (pod_template(deployment) or {})["spec"].get("volumes", [])
    assert all(v.keys() == {"name", "emptyDir"} for v in volumes), volumes
    # The shared ConfigMap is no way around it: it holds no secret (test_policy checks).
    assert not config_keys(objects) & SECRET_SETTINGS


@pytest.mark.parametrize("target", TARGETS)
def test_web_may_reach_only_the_jobs_api(target: str) -> None:
    """Policies add up: of all that select the web pods, only the default deny, the
    metrics scrapes' (ingress alone) and prospect-web, whose egress is DNS and the jobs
    pods' gRPC port alone."""
    objects = rendered(target)
    web_labels = pod_labels_of(objects, WEB)
    selecting = policies_selecting(objects, web_labels)
    assert sorted(p["metadata"]["name"] for p in selecting) == [
        "default-deny-ingress",
        "prospect-metrics",
        WEB,
    ]
    assert named(objects, "NetworkPolicy", "prospect-metrics")["spec"]["policyTypes"] == [
        "Ingress"
    ], "egress stays prospect-web's alone"
    spec = named(objects, "NetworkPolicy", WEB)["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert [r["ports"] for r in spec["ingress"]] == [[{"port": "http", "protocol": "TCP"}]]
    dns, jobs_rule = spec["egress"]
    assert dns == {"ports": DNS}, dns
    assert jobs_rule["ports"] == [{"port": grpc_port(objects), "protocol": "TCP"}]
    (peer,) = jobs_rule["to"]
    assert peer.keys() == {"podSelector"}, peer
    reached = [
        o for o, labels in pod_labels(objects).items() if matches(peer["podSelector"], labels)
    ]
    assert reached == [f"Deployment/{JOBS}"], reached


@pytest.mark.parametrize("target", TARGETS)
def test_jobs_api_admits_web_and_nothing_else_admits_it(target: str) -> None:
    objects = rendered(target)
    web_labels = pod_labels_of(objects, WEB)

    def admitted(policy: Obj) -> list[Any]:
        """The ports of ``policy``'s ingress rules that name the web pods as a peer."""
        return [
            p["port"]
            for rule in policy["spec"].get("ingress", [])
            for peer in rule.get("from", [])
            if peer.keys() == {"podSelector"} and matches(peer["podSelector"], web_labels)
            for p in rule["ports"]
        ]

    jobs_policy = named(objects, "NetworkPolicy", JOBS)
    assert jobs_policy in policies_selecting(objects, pod_labels_of(objects, JOBS))
    assert admitted(jobs_policy) == ["grpc"], label(jobs_policy)
    for policy in of_kind(objects, "NetworkPolicy"):
        if policy is not jobs_policy:
            assert not admitted(policy), f"{label(policy)} admits the web pods"


@pytest.mark.parametrize("target", TARGETS)
def test_web_service_pdb_and_autoscaler(target: str) -> None:
    objects = rendered(target)
    web_labels = pod_labels_of(objects, WEB)
    service = named(objects, "Service", WEB)
    assert matches(service["spec"]["selector"], web_labels)
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("http", "http"), port
    pdb = named(objects, "PodDisruptionBudget", WEB)
    assert matches(pdb["spec"]["selector"], web_labels)
    hpa = named(objects, "HorizontalPodAutoscaler", WEB)
    assert hpa["spec"]["scaleTargetRef"]["name"] == WEB


def ingress_example() -> Obj:
    (ingress,) = [d for d in yaml.safe_load_all(INGRESS_EXAMPLE.read_text()) if d]
    return dict(ingress)


def test_ingress_example_is_valid_and_not_applied() -> None:
    ingress = ingress_example()
    assert ingress["kind"] == "Ingress"
    kubernetes_validate.validate(ingress, KUBERNETES_VERSION, strict=True)
    for target in TARGETS:
        kustomization = yaml.safe_load((K8S_DIR / target / "kustomization.yaml").read_text())
        assert INGRESS_EXAMPLE.name not in kustomization.get("resources", []), target
        assert not of_kind(rendered(target), "Ingress"), target


def test_ingress_example_routes_https_to_the_web_service() -> None:
    ingress = ingress_example()
    service = named(rendered("overlays/prod"), "Service", WEB)
    annotations = ingress["metadata"]["annotations"]
    assert annotations.get("cert-manager.io/cluster-issuer") or annotations.get(
        "cert-manager.io/issuer"
    )
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"], tls
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    assert backend["name"] == WEB
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]


def test_ingress_example_lets_event_streams_through() -> None:
    """Server-Sent Events unbuffered, held open well past the web's keep-alive interval;
    bodies limited as the web process limits them."""
    annotations = ingress_example()["metadata"]["annotations"]
    nginx = "nginx.ingress.kubernetes.io/"
    assert annotations[nginx + "proxy-buffering"] == "off"
    assert int(annotations[nginx + "proxy-read-timeout"]) >= 4 * HEARTBEAT_S
    size = annotations[nginx + "proxy-body-size"]
    assert size.endswith("k"), size
    limit = int(
        generated(rendered("overlays/prod"), "ConfigMap", "prospect-config")["data"][
            "WEB_MAX_BODY_BYTES"
        ]
    )
    assert int(size[:-1]) * 1024 == limit
