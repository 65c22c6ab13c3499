"""Monitoring: every service serves Prometheus metrics on a port named ``metrics`` that only
the monitoring namespace may reach; components/monitoring (in overlays/prod only: it needs
the Prometheus Operator's CRDs) scrapes each service with a PodMonitor, alerts with
PrometheusRules whose every alert has a severity, a summary, a description and a runbook
section in docs/runbooks.md, and ships a Grafana dashboard in a ConfigMap for Grafana's
sidecar. Every PromQL expression, in the rules and the dashboard, parses (promql-parser,
Prometheus' grammar) and names only metrics the services export (METRICS below). The
example HorizontalPodAutoscaler on a custom metric is valid and not applied. (The objects
themselves are validated against the CRDs' schemas in test_validate.py.)"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import prometheus_client
import promql_parser
import pytest
import yaml

from tests.k8s.manifests import (
    K8S_DIR,
    KUBERNETES_VERSION,
    REPO_ROOT,
    TARGETS,
    Obj,
    containers,
    generated,
    kubectl,
    label,
    matches,
    named,
    of_kind,
    pod_labels,
    pod_template,
    rendered,
)
from tests.k8s.test_validate import schema_errors

COMPONENT = K8S_DIR / "components" / "monitoring"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
# The placeholder every runbook_url starts with (README, "Alerts": replace it).
RUNBOOK_BASE = "https://git.example.com/prospect/blob/main/docs/runbooks.md"
HPA_EXAMPLE = COMPONENT / "jobs-hpa-metrics.example.yaml"
METRICS_PORT = 9464
# The namespace allowed to scrape, by the label Kubernetes gives every namespace.
MONITORING_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}
SERVICES = ("prospect-jobs", "prospect-discovery", "prospect-enrichment", "prospect-web")
MONITORING_KINDS = ("PodMonitor", "PrometheusRule")
DASHBOARD_LABEL = {"grafana_dashboard": "1"}

# Every metric the services export (services/common/metrics.py, services/jobs/metrics.py,
# services/common/worker_metrics.py, services/web/metrics.py), as Prometheus stores them.
COUNTERS_AND_GAUGES = {
    # every service
    "prospect_build_info",
    "prospect_consumer_pending_messages",
    "prospect_consumer_ack_pending_messages",
    # jobs
    "prospect_rpc_handled_total",
    "prospect_jobs_submitted_total",
    "prospect_jobs_finished_total",
    "prospect_jobs",
    "prospect_jobs_stuck",
    "prospect_jobs_stalled_total",
    "prospect_watch_streams",
    "prospect_outbox_rows",
    "prospect_reports_refused_total",
    "prospect_webhook_deliveries_total",
    # workers
    "prospect_tasks_total",
    "prospect_provider_requests_total",
    "prospect_provider_spend_usd_total",
    "prospect_ratelimit_answers_total",
    "prospect_cache_lookups_total",
    "prospect_leads_skipped_budget_total",
    # web
    "prospect_http_requests_total",
    "prospect_sse_streams",
}
HISTOGRAMS = {
    "prospect_rpc_duration_seconds",
    "prospect_update_delivery_seconds",
    "prospect_report_batch_size",
    "prospect_report_apply_seconds",
    "prospect_task_duration_seconds",
    "prospect_provider_request_duration_seconds",
    "prospect_ratelimit_wait_seconds",
}
METRICS = (
    COUNTERS_AND_GAUGES
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | {"up"}  # Prometheus' own, one per scrape target
)
ALERTS = {
    "ProspectServiceDown",
    "ProspectJobsStuck",
    "ProspectProviderKeyRefused",
    "ProspectProviderCreditsExhausted",
    "ProspectSpendRateHigh",
    "ProspectConsumerLagGrowing",
    "ProspectRPCErrorRatioHigh",
    "ProspectHTTPErrorRatioHigh",
    "ProspectWebhookGivenUp",
}
DASHBOARD_PANELS = {
    "Campaigns submitted and finished",
    "RPC latency p50 / p99",
    "Update delivery latency p50 / p99",
    "Spend by provider (USD/h)",
    "Consumer lag",
    "RPC error ratio (server-side codes)",
    "Provider errors by outcome",
    "Tasks by outcome",
}
# What each runbook section says, in this order.
RUNBOOK_PARTS = ("**What it means.**", "**Confirm.**", "**Likely causes.**", "**What to do.**")
# Grafana's variables, as a query would be sent for a 5-minute step.
_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "${namespace}": "prospect",
    "$namespace": "prospect",
}


def prod() -> list[Obj]:
    return rendered("overlays/prod")


def rules(objects: list[Obj]) -> list[Obj]:
    return [
        rule
        for obj in of_kind(objects, "PrometheusRule")
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
    ]


def alerts(objects: list[Obj]) -> dict[str, Obj]:
    return {r["alert"]: r for r in rules(objects) if "alert" in r}


def dashboard_configmap(objects: list[Obj]) -> Obj:
    return generated(objects, "ConfigMap", "prospect-grafana-dashboard")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((COMPONENT / "dashboard.json").read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # the panels of a collapsed row
    return out


def dashboard_exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query, Grafana's variables given values."""
    out = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in _GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def metric_names(expr: str) -> set[str]:
    """The metrics an expression selects; fails the test when it does not parse."""
    try:
        ast = promql_parser.parse(expr)
    except ValueError as e:
        pytest.fail(f"PromQL does not parse: {e}\n{expr}", pytrace=False)
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), None
            )
            assert name, f"a selector without a metric name in {expr}"
            names.add(name)
        return True

    promql_parser.walk(ast, visit)
    return names


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """The level-2 sections of docs/runbooks.md: anchor -> text."""
    text = RUNBOOKS.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {github_anchor(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def test_the_metric_list_is_what_the_services_register() -> None:
    """METRICS is exactly the prospect_* series the services' metric modules define."""
    for module in (
        "services.common.metrics",
        "services.jobs.metrics",
        "services.common.worker_metrics",
        "services.web.metrics",
    ):
        importlib.import_module(module)
    registered = set()
    for family in prometheus_client.REGISTRY.collect():
        if not family.name.startswith("prospect_"):
            continue
        if family.type == "counter":
            registered.add(f"{family.name}_total")
        elif family.type == "histogram":
            registered |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count")}
        else:
            registered.add(family.name)
    assert registered == METRICS - {"up"}, registered ^ (METRICS - {"up"})


# --- metrics ports and who may reach them ---------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_serves_metrics_on_a_named_port(target: str) -> None:
    """Each service's container declares port ``metrics`` and listens there (METRICS_ADDR
    beside the port, like the other listen addresses); the containers that run to completion
    (migrate, retention) open none, and the shared ConfigMap does not turn it on for them."""
    objects = rendered(target)
    config = generated(objects, "ConfigMap", "prospect-config")["data"]
    assert "METRICS_ADDR" not in config, "set beside the metrics port, in each Deployment"
    for name in SERVICES:
        (c,) = containers(named(objects, "Deployment", name), init=False)
        ports = {p["name"]: p for p in c["ports"]}
        assert ports["metrics"]["containerPort"] == METRICS_PORT, name
        assert ports["metrics"]["protocol"] == "TCP", name
        env = {v["name"]: v.get("value") for v in c["env"]}
        assert env["METRICS_ADDR"] == f"0.0.0.0:{METRICS_PORT}", name
    run_to_completion = [
        (obj, c)
        for obj in of_kind(objects, "Deployment")
        for c in (pod_template(obj) or {})["spec"].get("initContainers", [])
    ] + [(obj, c) for obj in of_kind(objects, "CronJob") for c in containers(obj)]
    assert run_to_completion
    for obj, c in run_to_completion:
        names = {v["name"] for v in c.get("env", [])}
        assert "METRICS_ADDR" not in names, f"{label(obj)} container {c['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_monitoring_namespace_may_scrape(target: str) -> None:
    """prospect-metrics admits the metrics port of the four services from the namespace
    `monitoring` alone; no other policy opens the metrics port."""
    objects = rendered(target)
    policy = named(objects, "NetworkPolicy", "prospect-metrics")
    spec = policy["spec"]
    selected = sorted(
        owner
        for owner, labels in pod_labels(objects).items()
        if matches(spec["podSelector"], labels)
    )
    assert selected == sorted(f"Deployment/{name}" for name in SERVICES), selected
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": MONITORING_NAMESPACE}}]
    for other in of_kind(objects, "NetworkPolicy"):
        if other is policy:
            continue
        for r in other["spec"].get("ingress", []):
            ports = [p["port"] for p in r.get("ports", [])]
            assert "metrics" not in ports and METRICS_PORT not in ports, label(other)


# --- where the monitoring objects are -------------------------------------------------------


def test_monitoring_objects_only_where_the_operator_is_required() -> None:
    """base and dev apply on a cluster without the Prometheus Operator; prod includes the
    component (and its README prerequisites say so)."""
    for target in ("base", "overlays/dev"):
        objects = rendered(target)
        for kind in MONITORING_KINDS:
            assert not of_kind(objects, kind), f"{target} renders a {kind}"
        assert not [o for o in of_kind(objects, "ConfigMap") if _is_dashboard(o)], target
    kustomization = yaml.safe_load((K8S_DIR / "overlays/prod/kustomization.yaml").read_text())
    assert kustomization["components"] == ["../../components/monitoring"]
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert HPA_EXAMPLE.name not in component.get("resources", [])


def _is_dashboard(configmap: Obj) -> bool:
    labels = configmap["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in DASHBOARD_LABEL.items())


def test_a_pod_monitor_scrapes_each_service() -> None:
    """One PodMonitor per service, in the service's namespace, selecting that Deployment's
    pods alone, on their port named metrics, with the job label set to its own name (the
    alerts and the dashboard rely on job="prospect-<service>")."""
    objects = prod()
    monitors = {m["metadata"]["name"]: m for m in of_kind(objects, "PodMonitor")}
    assert sorted(monitors) == sorted(SERVICES)
    pods = pod_labels(objects)
    for name, monitor in monitors.items():
        spec = monitor["spec"]
        assert "namespaceSelector" not in spec, f"{name}: its own namespace only"
        selected = [o for o, labels in pods.items() if matches(spec["selector"], labels)]
        assert selected == [f"Deployment/{name}"], f"{name} selects {selected}"
        (endpoint,) = spec["podMetricsEndpoints"]
        (c,) = containers(named(objects, "Deployment", name), init=False)
        assert endpoint["port"] in [p["name"] for p in c["ports"]], name
        assert endpoint.get("path", "/metrics") == "/metrics"
        job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
        assert job == [{"action": "replace", "targetLabel": "job", "replacement": name}], job


def test_crd_schemas_reject_what_prometheus_would() -> None:
    """The kept Prometheus Operator schemas are closed: a typo, a missing field, a rule that
    is both alert and record, or a malformed duration is an error."""
    objects = prod()
    monitor = named(objects, "PodMonitor", "prospect-jobs")
    assert not schema_errors(monitor)
    typo = copy.deepcopy(monitor)
    typo["spec"]["podMetricEndpoints"] = typo["spec"].pop("podMetricsEndpoints")
    assert schema_errors(typo)
    missing = copy.deepcopy(monitor)
    del missing["spec"]["selector"]
    assert schema_errors(missing)
    interval = copy.deepcopy(monitor)
    interval["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    assert schema_errors(interval)
    rule_obj = named(objects, "PrometheusRule", "prospect-alerts")
    assert not schema_errors(rule_obj)
    both = copy.deepcopy(rule_obj)
    both["spec"]["groups"][0]["rules"][0]["record"] = "prospect:up"
    assert schema_errors(both)
    no_expr = copy.deepcopy(rule_obj)
    del no_expr["spec"]["groups"][0]["rules"][0]["expr"]
    assert schema_errors(no_expr)
    duration = copy.deepcopy(rule_obj)
    duration["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    assert schema_errors(duration)


# --- alerts ---------------------------------------------------------------------------------


def test_the_alerts_an_on_call_engineer_needs() -> None:
    objects = prod()
    found = alerts(objects)
    assert found.keys() == ALERTS, found.keys() ^ ALERTS
    assert len(rules(objects)) == len(found), "every rule is an alert (one name each)"
    groups = [g["name"] for o in of_kind(objects, "PrometheusRule") for g in o["spec"]["groups"]]
    assert len(groups) == len(set(groups)), f"group names must be unique: {groups}"
    for name, rule in found.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations.keys() >= {"summary", "description", "runbook_url"}, name
        for key, text in annotations.items():
            assert text.count("{{") == text.count("}}"), f"{name} {key}: unbalanced template"


def test_every_alert_links_its_runbook_section() -> None:
    sections = runbook_sections()
    for name, rule in alerts(prod()).items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{github_anchor(name)}", f"{name}: {url}"
        section = sections.get(github_anchor(name))
        assert section is not None, f"docs/runbooks.md has no section `## {name}`"
        positions = [section.find(part) for part in RUNBOOK_PARTS]
        assert -1 not in positions and positions == sorted(positions), (
            f"{name}: its runbook says {', '.join(RUNBOOK_PARTS)}, in that order"
        )
        assert "```promql" in section, f"{name}: its runbook shows a query to confirm it"
    extra = sections.keys() - {github_anchor(a) for a in ALERTS} - {"contents", "before-you-start"}
    assert not extra, f"runbook sections for no alert: {extra}"


def test_alert_expressions_parse_and_use_exported_metrics() -> None:
    for rule in rules(prod()):
        names = metric_names(str(rule["expr"]))
        assert names, f"{rule.get('alert')} selects no metric"
        assert names <= METRICS, f"{rule.get('alert')}: unknown metrics {names - METRICS}"


def test_service_down_covers_every_scrape_job() -> None:
    expr = alerts(prod())["ProspectServiceDown"]["expr"]
    for name in SERVICES:
        assert f'absent(up{{job="{name}"}})' in expr, name
        assert name.removeprefix("prospect-") in expr, name


def test_the_spend_ceiling_is_one_number_an_overlay_patches(tmp_path: Path) -> None:
    """ProspectSpendRateHigh is the first rule of the first group of its own object, and the
    patch its file and the README document, applied by kustomize, changes the ceiling and
    nothing else."""
    spend = named(prod(), "PrometheusRule", "prospect-spend")
    (group,) = spend["spec"]["groups"]
    (rule,) = group["rules"]
    assert rule["alert"] == "ProspectSpendRateHigh"
    m = re.fullmatch(r"(.*\* 3600) > ([0-9.]+)", rule["expr"].strip())
    assert m, rule["expr"]
    source = (COMPONENT / "spend-alert.yaml").read_text()
    example = "\n".join(
        line.removeprefix("#   ") for line in source.splitlines() if line.startswith("#   ")
    )
    patches = yaml.safe_load(example)["patches"]
    readme = (REPO_ROOT / "README.md").read_text()
    documented = re.search(r"\*\*The spend ceiling\*\*.*?```yaml\n(.*?)```", readme, re.S)
    assert documented, 'README, "Alerts": the spend ceiling\'s patch'
    assert yaml.safe_load(documented.group(1))["patches"] == patches, "README and the file agree"
    patched = _render_component_with(patches, tmp_path)
    after = named(patched, "PrometheusRule", "prospect-spend")["spec"]["groups"][0]["rules"][0]
    m2 = re.fullmatch(r"(.*\* 3600) > ([0-9.]+)", after["expr"].strip())
    assert m2 and m2.group(1) == m.group(1), after["expr"]
    assert m2.group(2) != m.group(2), "the example patch sets another ceiling"
    assert {k: v for k, v in after.items() if k != "expr"} == {
        k: v for k, v in rule.items() if k != "expr"
    }


def _render_component_with(patches: list[Obj], tmp: Path) -> list[Obj]:
    """components/monitoring alone, with ``patches``, as kustomize renders it."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "components": [os.path.relpath(COMPONENT, tmp)],  # kustomize refuses absolute ones
        "patches": patches,
    }
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    proc = subprocess.run(
        [kubectl(), "kustomize", str(tmp)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_configmap_is_picked_up_by_grafanas_sidecar() -> None:
    """The component's ConfigMap carries the sidecar's label and dashboard.json unchanged,
    under a fixed name (no hash suffix: an old copy would stay behind as a duplicate)."""
    configmap = dashboard_configmap(prod())
    assert configmap["metadata"]["name"] == "prospect-grafana-dashboard"
    assert _is_dashboard(configmap)
    (key,) = configmap["data"]
    assert key.endswith(".json")
    assert json.loads(configmap["data"][key]) == dashboard()
    dashboards = [o for o in of_kind(prod(), "ConfigMap") if _is_dashboard(o)]
    assert dashboards == [configmap]


def test_dashboard_shows_what_the_on_call_looks_at() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    titles = [p["title"] for p in panels(board)]
    assert DASHBOARD_PANELS <= set(titles), DASHBOARD_PANELS - set(titles)
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "namespace" in variables


def test_dashboard_queries_parse_and_use_exported_metrics() -> None:
    """Every query parses, names only exported metrics, reads the data source the viewer
    picks and the namespace chosen (two installs in one Prometheus do not mix)."""
    board = dashboard()
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
    exprs = dashboard_exprs(board)
    assert exprs
    for title, expr in exprs:
        names = metric_names(expr)
        assert names and names <= METRICS, f"{title}: unknown metrics {names - METRICS}"


# --- the jobs HPA on a custom metric (an example, not applied) ------------------------------


def test_jobs_hpa_metrics_example_is_valid_and_not_applied() -> None:
    """The example keeps the CPU target and adds a per-pod metric the jobs service exports,
    for prometheus-adapter to serve (README, "How scaling works")."""
    (hpa,) = [d for d in yaml.safe_load_all(HPA_EXAMPLE.read_text()) if d]
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    applied = named(prod(), "HorizontalPodAutoscaler", "prospect-jobs")
    assert hpa["metadata"]["name"] == applied["metadata"]["name"]
    assert hpa["spec"]["scaleTargetRef"] == applied["spec"]["scaleTargetRef"]
    kinds = [m["type"] for m in hpa["spec"]["metrics"]]
    assert kinds == ["Resource", "Pods"], kinds
    assert hpa["spec"]["metrics"][0] == applied["spec"]["metrics"][0], "CPU kept"
    pods_metric = hpa["spec"]["metrics"][1]["pods"]["metric"]["name"]
    assert pods_metric in METRICS, pods_metric
    for target in TARGETS:
        for obj in of_kind(rendered(target), "HorizontalPodAutoscaler"):
            assert [m["type"] for m in obj["spec"]["metrics"]] == ["Resource"], target
