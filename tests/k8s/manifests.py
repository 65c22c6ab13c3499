"""deploy/k8s as the cluster would see it: overlays rendered with ``kubectl kustomize``, and
what the rendered objects say (pod templates, containers, each container's environment).

Shared by the validation, policy and "the manifests run" tests. Without kubectl every test
that renders fails with a message saying so: CI has kubectl, and a silent skip would hide
broken manifests.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
SCHEMAS_DIR = Path(__file__).with_name("schemas")
# Every kustomization that must build; the base is valid on its own.
TARGETS = ("base", "overlays/dev", "overlays/prod")
# Objects are validated against this Kubernetes release's schemas (the oldest we support).
KUBERNETES_VERSION = "1.33.0"
APP_IMAGE = "prospect"  # the one image of every prospect process (Dockerfile)
SECRET_NAME = "prospect-secrets"

Obj = dict[str, Any]

# Settings the code keeps out of its repr are secrets; DATABASE_URL carries a password.
SECRET_SETTINGS = frozenset(
    {f.name.upper() for f in dataclasses.fields(Settings) if not f.repr} | {"DATABASE_URL"}
)
SETTING_NAMES = frozenset(f.name.upper() for f in dataclasses.fields(Settings))

_POD_TEMPLATE = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def kubectl() -> str:
    """The kubectl binary, or a test failure that says what is missing."""
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl not found on PATH: the Kubernetes checks render deploy/k8s with "
            "`kubectl kustomize` (kubectl 1.27 or newer, as in CI). Install kubectl and run "
            "`make k8s-validate` again.",
            pytrace=False,
        )
    return path


@functools.cache
def rendered(target: str) -> list[Obj]:
    """The objects ``kubectl kustomize deploy/k8s/<target>`` prints (rendered once a session;
    read them, never change them)."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(K8S_DIR / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {target} failed:\n{proc.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def project_version() -> str:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    for obj in of_kind(objects, kind):
        if obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} among the rendered objects")


def generated(objects: list[Obj], kind: str, base_name: str) -> Obj:
    """A generated object (ConfigMap with a hash suffix) by the name it was generated with."""
    pattern = re.compile(rf"^{re.escape(base_name)}(-[a-z0-9]{{10}})?$")
    found = [o for o in of_kind(objects, kind) if pattern.match(o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} generated as {base_name}, found {found}"
    return found[0]


def pod_template(obj: Obj) -> Obj | None:
    path = _POD_TEMPLATE.get(obj["kind"])
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node[key]
    return dict(node)


def workloads(objects: list[Obj]) -> list[Obj]:
    """Every object that runs pods."""
    return [o for o in objects if o["kind"] in _POD_TEMPLATE]


def containers(obj: Obj, *, init: bool = True) -> list[Obj]:
    """The containers of a workload's pods, init containers first when ``init``."""
    spec = (pod_template(obj) or {}).get("spec", {})
    return [*(spec.get("initContainers", []) if init else []), *spec.get("containers", [])]


def all_containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj, bool]]:
    """(workload, container, is_init) for every container of every workload."""
    for obj in workloads(objects):
        spec = (pod_template(obj) or {})["spec"]
        for c in spec.get("initContainers", []):
            yield obj, c, True
        for c in spec["containers"]:
            yield obj, c, False


def is_app(container: Obj) -> bool:
    """Whether the container runs the prospect image (whatever registry it comes from)."""
    repository = container["image"].split("@")[0].rsplit(":", 1)[0]
    return repository.rsplit("/", 1)[-1] == APP_IMAGE


def image_tag(image: str) -> str:
    """The tag of an image reference ('' when it has none)."""
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions, or a plain map) selects."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(objects: list[Obj]) -> dict[str, dict[str, str]]:
    """The labels of every kind of pod an overlay runs, by owner (CloudNativePG's too)."""
    out = {label(o): (pod_template(o) or {})["metadata"]["labels"] for o in workloads(objects)}
    for cluster in of_kind(objects, "Cluster"):
        labels = dict(cluster["spec"].get("inheritedMetadata", {}).get("labels", {}))
        labels["cnpg.io/cluster"] = cluster["metadata"]["name"]
        out[label(cluster)] = labels
    return out


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def container_env(
    container: Obj,
    objects: list[Obj],
    secrets: Mapping[str, Mapping[str, str]],
    fields: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a pod would give ``container``: envFrom, then env (which wins), with
    ConfigMaps from ``objects``, Secrets from ``secrets`` (name -> data) and ``fields`` for
    fieldRef paths. A reference to something missing that is not optional fails the test."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in of_kind(objects, "ConfigMap")}
    sources = {"configMap": configmaps, "secret": secrets}
    where = f"container {container['name']}"
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        kind = "configMap" if "configMapRef" in ref else "secret"
        target = ref[f"{kind}Ref"]
        data = sources[kind].get(target["name"])
        if data is None:
            assert target.get("optional"), f"{where}: envFrom {kind} {target['name']} not found"
            continue
        env.update({ref.get("prefix", "") + k: str(v) for k, v in data.items()})
    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert fields is not None and path in fields, f"{where}: {name} needs field {path}"
            env[name] = fields[path]
            continue
        kind = "configMap" if "configMapKeyRef" in source else "secret"
        ref = source[f"{kind}KeyRef"]
        value = sources[kind].get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{where}: {name} needs {kind} {ref['name']} {ref['key']}"
            continue
        env[name] = str(value)
    return env
