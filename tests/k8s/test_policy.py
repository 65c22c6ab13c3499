"""Policies over the rendered overlays: what every container must have (probes, requests and
limits, a locked-down security context, a pinned image), where secrets may come from, and
that the pieces agree with each other and with the code (ports, selectors, stream and
consumer names, settings, replicas)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
import yaml

from services.common import bus
from tests.k8s.manifests import (
    K8S_DIR,
    SECRET_NAME,
    SECRET_SETTINGS,
    SETTING_NAMES,
    TARGETS,
    Obj,
    all_containers,
    containers,
    generated,
    image_tag,
    is_app,
    label,
    matches,
    named,
    of_kind,
    pod_labels,
    pod_template,
    rendered,
    workloads,
)

LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")
# What other namespaces may reach, by NetworkPolicy: the jobs API and the web process.
OPEN_PORTS = {"prospect-jobs": ["grpc"], "prospect-web": ["http"]}
_CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_UNITS = {"": "1", "m": "0.001", "k": "1e3", "M": "1e6", "G": "1e9", "T": "1e12", "Ki": "1024"}
_UNITS |= {"Mi": str(1024**2), "Gi": str(1024**3), "Ti": str(1024**4)}


def quantity(value: object) -> Decimal:
    m = _QUANTITY.match(str(value))
    assert m, f"not a quantity: {value!r}"
    return Decimal(m.group(1)) * Decimal(_UNITS[m.group(2) or ""])


def config(objects: list[Obj]) -> dict[str, str]:
    return dict(generated(objects, "ConfigMap", "prospect-config")["data"])


def where(obj: Obj, container: Obj) -> str:
    return f"{label(obj)} container {container['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_recommended_labels_and_no_common_labels(target: str) -> None:
    kustomization = yaml.safe_load((K8S_DIR / target / "kustomization.yaml").read_text())
    assert "commonLabels" not in kustomization, "use `labels:` (commonLabels is deprecated)"
    for obj in rendered(target):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "prospect", label(obj)
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", label(obj)
    for obj in workloads(rendered(target)):
        labels = (pod_template(obj) or {})["metadata"]["labels"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= labels.keys()
        assert labels.get("app.kubernetes.io/part-of") == "prospect", label(obj)
        # volumeClaimTemplates are immutable: a label added there would block updates.
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            assert not claim["metadata"].get("labels"), f"{label(obj)}: labels on its PVCs"


@pytest.mark.parametrize("target", TARGETS)
def test_every_long_running_container_has_probes(target: str) -> None:
    for obj in workloads(rendered(target)):
        if obj["kind"] not in LONG_RUNNING:
            continue
        for c in containers(obj, init=False):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where(obj, c)} has no {probe}"
            if not is_app(c):
                continue
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            if "http" in ports:  # the web process: HTTP probes on its port
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = c[probe]["httpGet"]["port"]
                    assert port in {*ports, *ports.values()}, f"{where(obj, c)} {probe}"
                continue
            # The services: native gRPC probes on the grpc.health.v1 port the container names.
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] in ports.values(), where(obj, c)
            assert ports.keys() & {"grpc", "health"}, f"{where(obj, c)}: ports {ports}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_and_limits(target: str) -> None:
    for obj, c, _ in all_containers(rendered(target)):
        resources = c.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request and limit, f"{where(obj, c)}: {resource} request and limit"
            assert quantity(request) <= quantity(limit), f"{where(obj, c)}: {resource}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_runs_locked_down(target: str) -> None:
    for obj in workloads(rendered(target)):
        spec = (pod_template(obj) or {})["spec"]
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, label(obj)
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{label(obj)}: {flag}"
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c.get("securityContext", {})
            effective = {**pod_sc, **sc}
            assert effective.get("runAsNonRoot") is True, where(obj, c)
            assert isinstance(effective.get("runAsUser"), int), f"{where(obj, c)}: numeric uid"
            assert effective["runAsUser"] > 0, where(obj, c)
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault"
            assert sc.get("readOnlyRootFilesystem") is True, where(obj, c)
            assert sc.get("allowPrivilegeEscalation") is False, where(obj, c)
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where(obj, c)
            assert not sc.get("capabilities", {}).get("add"), where(obj, c)
            assert not sc.get("privileged"), where(obj, c)


@pytest.mark.parametrize("target", TARGETS)
def test_every_image_is_pinned(target: str) -> None:
    objects = rendered(target)
    images = [(where(obj, c), c["image"]) for obj, c, _ in all_containers(objects)]
    images += [(label(o), o["spec"]["imageName"]) for o in of_kind(objects, "Cluster")]
    for owner, image in images:
        tag = image_tag(image)
        assert tag or "@sha256:" in image, f"{owner}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag or "0"), f"{owner}: {image} is not pinned"


@pytest.mark.parametrize("target", TARGETS)
def test_no_plain_secret_values(target: str) -> None:
    """Secrets come from Secrets: never in a ConfigMap, an inline value or a command line."""
    objects = rendered(target)
    for cm in of_kind(objects, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert key not in SECRET_SETTINGS, f"{label(cm)}: {key} belongs in a Secret"
            assert not _CREDENTIALS_IN_URL.search(value), f"{label(cm)}: {key}"
            # A config file may name a password only by an environment variable ($NAME).
            for m in re.finditer(r"^\s*(password|pass|token)\s*[:=]\s*(.*)$", value, re.M | re.I):
                assert re.fullmatch(r"\$[A-Z_][A-Z0-9_]*", m.group(2).strip()), f"{key}: {m[0]}"
    for obj, c, _ in all_containers(objects):
        for var in c.get("env", []):
            secret_like = var["name"] in SECRET_SETTINGS or "PASSWORD" in var["name"]
            if secret_like:
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{where(obj, c)} {var}"
            assert not _CREDENTIALS_IN_URL.search(str(var.get("value", ""))), where(obj, c)
        # Not even as $(VAR): the kubelet expands it into the process's argv, which any
        # process of the node may read (tests/k8s/test_nats_authorization.py checks more).
        argv = [*c.get("command", []), *c.get("args", [])]
        for arg in argv:
            flag = arg.split("=", 1)[0]
            assert flag not in ("--user", "--pass", "--password", "--token", "--auth"), (
                f"{where(obj, c)}: {arg}: a credential on the command line"
            )


@pytest.mark.parametrize("target", TARGETS)
def test_config_keys_and_env_names_are_settings(target: str) -> None:
    """A typo in a setting's name would be silently ignored by the services: none allowed."""
    objects = rendered(target)
    unknown = config(objects).keys() - SETTING_NAMES
    assert not unknown, f"prospect-config keys that are no setting: {unknown}"
    for obj, c, _ in all_containers(objects):
        if is_app(c):
            names = {v["name"] for v in c.get("env", [])}
            assert names <= SETTING_NAMES, f"{where(obj, c)}: {names - SETTING_NAMES}"


@pytest.mark.parametrize("target", TARGETS)
def test_termination_grace_covers_the_drain(target: str) -> None:
    objects = rendered(target)
    drain = float(config(objects)["SHUTDOWN_GRACE_S"])
    for obj in workloads(objects):
        spec = (pod_template(obj) or {})["spec"]
        for c in spec["containers"]:
            if not is_app(c) or obj["kind"] not in LONG_RUNNING:
                continue
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            assert grace >= pre_stop + drain + 10, f"{label(obj)}: grace {grace}s too short"


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_and_ports_meet_real_pods(target: str) -> None:
    """Services, PDBs, NetworkPolicies select pods that exist; Service ports name real ones."""
    objects = rendered(target)
    pods = pod_labels(objects)

    def selects(selector: dict[str, Any]) -> list[str]:
        return [owner for owner, labels in pods.items() if matches(selector, labels)]

    for svc in of_kind(objects, "Service"):
        owners = selects(svc["spec"]["selector"])
        assert owners, f"{label(svc)} selects no pod"
        for owner in owners:
            ports = [p for c in containers(named_owner(objects, owner)) for p in c.get("ports", [])]
            for port in svc["spec"]["ports"]:
                target_port = port.get("targetPort", port["port"])
                found = [p for p in ports if target_port in (p.get("name"), p["containerPort"])]
                assert found, f"{label(svc)} port {port['name']} -> {target_port}: no such port"
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]), f"{label(pdb)} selects no pod"
    for policy in of_kind(objects, "NetworkPolicy"):
        selectors = [policy["spec"]["podSelector"]]
        for rule in [*policy["spec"].get("ingress", []), *policy["spec"].get("egress", [])]:
            peers = [*rule.get("from", []), *rule.get("to", [])]
            selectors += [p["podSelector"] for p in peers if p.keys() == {"podSelector"}]
        for selector in selectors:
            if target == "base" and matches(selector, {"app.kubernetes.io/component": "database"}):
                continue  # the base brings no PostgreSQL; the overlays do
            assert selects(selector), f"{label(policy)}: {selector} selects no pod"


def named_owner(objects: list[Obj], owner: str) -> Obj:
    kind, name = owner.split("/", 1)
    return named(objects, kind, name)


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_jobs_api_and_the_web_are_open_to_other_namespaces(target: str) -> None:
    objects = rendered(target)
    policies = of_kind(objects, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert (
        deny
        and deny[0]["spec"]["policyTypes"] == ["Ingress"]
        and not deny[0]["spec"].get("ingress")
    ), "a default-deny ingress policy for the namespace"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from", [])
            open_to_all = not peers or any(
                "namespaceSelector" in p and not p["namespaceSelector"] for p in peers
            )
            if open_to_all:
                name = policy["metadata"]["name"]
                assert name in OPEN_PORTS, label(policy)
                assert [p["port"] for p in rule["ports"]] == OPEN_PORTS[name], label(policy)


def test_streams_are_replicated_across_the_nats_nodes() -> None:
    for target, replicas in (("overlays/dev", 1), ("overlays/prod", 3)):
        objects = rendered(target)
        nats = named(objects, "StatefulSet", "nats")
        assert nats["spec"]["replicas"] == replicas, target
        assert config(objects)["STREAM_REPLICAS"] == str(replicas), target
        conf = generated(objects, "ConfigMap", "nats-config")["data"]["nats.conf"]
        routes = re.findall(r"(?:nats|tls)://([a-z0-9-]+)\.([a-z0-9-]+):6222", conf)
        expected = [(f"nats-{i}", nats["spec"]["serviceName"]) for i in range(replicas)]
        assert routes == (expected if replicas > 1 else []), f"{target}: routes {routes}"


def test_database_url_comes_from_the_right_secret() -> None:
    """dev: prospect-secrets; prod: the secret CloudNativePG generates for its Cluster."""
    prod = rendered("overlays/prod")
    clusters = of_kind(prod, "Cluster")
    assert len(clusters) == 1 and clusters[0]["spec"]["instances"] == 3
    expected = {
        "overlays/dev": (SECRET_NAME, "DATABASE_URL"),
        "overlays/prod": (f"{clusters[0]['metadata']['name']}-app", "uri"),
    }
    for target, (secret, key) in expected.items():
        users = 0
        for obj, c, _ in all_containers(rendered(target)):
            for var in c.get("env", []):
                if var["name"] == "DATABASE_URL":
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == (secret, key), where(obj, c)
                    users += 1
        assert users == 3, f"{target}: migrate, jobs and retention read DATABASE_URL"


def test_workers_scale_on_their_consumers_lag() -> None:
    prod = rendered("overlays/prod")
    settings = config(prod)
    nats = named(prod, "StatefulSet", "nats")
    namespace = nats["metadata"]["namespace"]
    consumers = {
        "prospect-discovery": (bus.DISCOVERY_CONSUMER, "DISCOVERY_CONCURRENCY"),
        "prospect-enrichment": (bus.ENRICHMENT_CONSUMER, "ENRICHMENT_CONCURRENCY"),
    }
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in of_kind(prod, "ScaledObject")}
    assert scaled.keys() == consumers.keys()
    for deployment, (consumer, concurrency) in consumers.items():
        assert "replicas" not in named(prod, "Deployment", deployment)["spec"], deployment
        spec = scaled[deployment]["spec"]
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"], deployment
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        assert (meta["account"], meta["stream"], meta["consumer"]) == (
            "$G",
            bus.WORK_STREAM,
            consumer,
        )
        host = f"{nats['spec']['serviceName']}.{namespace}.svc.cluster.local"
        monitor = named(prod, "Service", nats["spec"]["serviceName"])
        assert 8222 in [p["port"] for p in monitor["spec"]["ports"]]
        assert meta["natsServerMonitoringEndpoint"] == f"{host}:8222"
        # In-flight tasks count as lag: one busy pod with no queue must not scale out.
        assert int(meta["lagThreshold"]) >= int(settings[concurrency]), deployment
    assert not of_kind(rendered("overlays/dev"), "ScaledObject"), "dev needs no KEDA"


@pytest.mark.parametrize("target", TARGETS)
def test_jobs_and_web_scale_on_cpu_from_two_replicas(target: str) -> None:
    objects = rendered(target)
    hpas = {
        o["spec"]["scaleTargetRef"]["name"]: o for o in of_kind(objects, "HorizontalPodAutoscaler")
    }
    assert hpas.keys() == {"prospect-jobs", "prospect-web"}
    for name, hpa in hpas.items():
        deployment = named(objects, "Deployment", name)
        assert deployment["spec"]["replicas"] == 2, name
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > 2, name
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"], name
        assert containers(deployment, init=False)[0]["resources"]["requests"]["cpu"], name
