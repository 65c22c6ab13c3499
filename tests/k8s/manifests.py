"""deploy/k8s as the cluster would see it: overlays rendered with ``kubectl kustomize``, and
what the rendered objects say (pod templates, containers, each container's environment and
mounts, nats-server's configuration), and the NATS pod made runnable here.

Shared by the validation, policy, NATS security and "the manifests run" tests. Without
kubectl every test that renders fails with a message saying so: CI has kubectl, and a
silent skip would hide broken manifests.
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
from secrets import token_hex
from typing import Any

import pytest
import yaml

from services.cli.stack import nats_server_binary
from services.common.nats_auth import IDENTITIES
from services.common.settings import Settings
from tests.certs import tls_secret

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
SCHEMAS_DIR = Path(__file__).with_name("schemas")
# Every kustomization that must build; the base is valid on its own.
TARGETS = ("base", "overlays/dev", "overlays/prod")
# Objects are validated against this Kubernetes release's schemas (the oldest we support).
KUBERNETES_VERSION = "1.33.0"
APP_IMAGE = "prospect"  # the one image of every prospect process (Dockerfile)
SECRET_NAME = "prospect-secrets"
# overlays/prod: NATS' certificate, its key and CA (nats-certificate.example.yaml).
NATS_TLS_SECRET = "prospect-nats-tls"
# Each service's Deployment and the NATS user it connects as (services/common/nats_auth.py).
NATS_CLIENTS = {
    "prospect-jobs": "jobs",
    "prospect-discovery": "discovery",
    "prospect-enrichment": "enrichment",
}
# The keys of prospect-secrets holding the NATS users' passwords: named as the environment
# variables nats-server reads them from ($NATS_JOBS_PASSWORD...).
NATS_PASSWORD_KEYS = tuple(identity.password_env for identity in IDENTITIES.values())
NATS_CERTIFICATE_EXAMPLE = K8S_DIR / "overlays" / "prod" / "nats-certificate.example.yaml"

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


def nats_certificate() -> Obj:
    """The cert-manager Certificate of nats-certificate.example.yaml issuing NATS_TLS_SECRET."""
    docs = [d for d in yaml.safe_load_all(NATS_CERTIFICATE_EXAMPLE.read_text()) if d]
    (cert,) = [
        d for d in docs
        if d["kind"] == "Certificate" and d["spec"]["secretName"] == NATS_TLS_SECRET
    ]  # fmt: skip
    return dict(cert)


def nats_secrets() -> dict[str, dict[str, str]]:
    """What NATS needs of the Secrets an operator creates (README, "Secrets to create"): a
    random password for each NATS user in prospect-secrets, and NATS_TLS_SECRET as the
    example Certificate would issue it (from a CA of the test's own)."""
    passwords = {key: token_hex(24) for key in NATS_PASSWORD_KEYS}
    names = tuple(nats_certificate()["spec"]["dnsNames"])
    return {SECRET_NAME: passwords, NATS_TLS_SECRET: tls_secret(names)}


def nats_pod(
    objects: list[Obj], secrets: Mapping[str, Mapping[str, str]], root: Path
) -> tuple[list[str], dict[str, str], dict[str, Path]]:
    """The nats container of ``objects`` as pod nats-0 would start it, here: its argv (the
    local nats-server binary; paths under its mounts made local), its environment, and its
    mounts (:func:`volume_mounts`, under ``root``)."""
    nats = named(objects, "StatefulSet", "nats")
    (container,) = containers(nats)
    env = container_env(container, objects, secrets, {"metadata.name": "nats-0"})
    mounts = volume_mounts(nats, container, objects, secrets, root)
    argv = [expand(arg, env) for arg in [*container["command"], *container.get("args", [])]]
    assert argv[0] == "nats-server", argv
    assert "$(" not in " ".join(argv), f"unexpanded variable in {argv}"
    return [nats_server_binary(), *(local_paths(a, mounts) for a in argv[1:])], env, mounts


def volume_mounts(
    owner: Obj,
    container: Obj,
    objects: list[Obj],
    secrets: Mapping[str, Mapping[str, str]],
    root: Path,
) -> dict[str, Path]:
    """Every volume ``container`` mounts, made a directory under ``root``: mount path ->
    directory. emptyDir and the StatefulSet's claims are empty, a ConfigMap's or a Secret's
    keys (``items`` when given) are files, from ``objects`` and ``secrets`` (name -> data).
    In the ConfigMaps' files the other mounts' paths are made local (a config file naming
    its store or pid file), so a process reads them here as it would in the pod."""
    spec = (pod_template(owner) or {})["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in owner["spec"].get("volumeClaimTemplates", [])}
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in of_kind(objects, "ConfigMap")}
    where = f"{label(owner)} container {container['name']}"
    mounts: dict[str, Path] = {}
    config_files: list[Path] = []
    for mount in container.get("volumeMounts", []):
        assert "subPath" not in mount, f"{where}: subPath mounts do not run here"
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = local
        volume = volumes.get(mount["name"])
        if volume is None:
            assert mount["name"] in claims, f"{where}: no volume {mount['name']}"
            continue
        if "emptyDir" in volume:
            continue
        kind = "configMap" if "configMap" in volume else "secret"
        assert kind in volume, f"{where}: volume {mount['name']} does not run here: {volume}"
        source = volume[kind]
        name = source["name"] if kind == "configMap" else source["secretName"]
        data = (configmaps if kind == "configMap" else secrets).get(name)
        if data is None:
            assert source.get("optional"), f"{where}: {kind} {name} not found"
            continue
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            assert item["key"] in data, f"{where}: {kind} {name} has no key {item['key']}"
            (local / item["path"]).write_text(data[item["key"]])
            if kind == "configMap":
                config_files.append(local / item["path"])
    for path in config_files:
        path.write_text(local_paths(path.read_text(), mounts))
    return mounts


def local_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """``text`` with every path under a mount (``mount path -> directory``) made local."""
    if not mounts:
        return text
    paths = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    pattern = rf"(?<![\w./-])({paths})(?=/|[^\w.-]|$)"
    return re.sub(pattern, lambda m: str(mounts[m.group(1)]), text)


_INCLUDE = re.compile(r"""^[ \t]*include[ \t]+["']?([^"'\s;]+)["']?[ \t]*;?[ \t]*$""", re.M)


def nats_config(files: Mapping[str, str], name: str = "nats.conf") -> str:
    """nats-server's configuration ``name`` among ``files`` (a ConfigMap's data, mounted
    in one directory) with its ``include`` lines replaced by the files they name."""

    def include(m: re.Match[str]) -> str:
        path = m.group(1).removeprefix("./")
        assert "/" not in path, f"{name}: include {m.group(1)} leaves the ConfigMap"
        assert path in files, f"{name}: include {m.group(1)}: no such key in the ConfigMap"
        return nats_config(files, path)

    return _INCLUDE.sub(include, files[name])


def _without_comments(text: str) -> str:
    out, quote = [], ""
    for line in text.splitlines():
        kept = []
        for i, c in enumerate(line):
            if quote:
                quote = "" if c == quote else quote
            elif c in "\"'":
                quote = c
            elif (c == "#" or line.startswith("//", i)) and (i == 0 or line[i - 1].isspace()):
                break  # a comment (not the // of a URL)
            kept.append(c)
        out.append("".join(kept))
    return "\n".join(out)


def _closing(text: str, start: int) -> int:
    """The index of the bracket closing the one at ``start``."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i
    raise AssertionError(f"unbalanced brackets in nats config: {text[start : start + 80]!r}")


def nats_entries(text: str) -> list[tuple[str, str]]:
    """(key, value) of a nats config text's top level; a block's or an array's value is its
    text, brackets included. Comments are dropped."""
    text = _without_comments(text)
    entries, i = [], 0
    key = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(?:[:=]\s*|\s+|(?=[{\[]))")
    while i < len(text):
        m = key.match(text, i)
        if not m:
            assert not text[i:].strip(), f"nats config: cannot read {text[i : i + 80]!r}"
            break
        i = m.end()
        if i < len(text) and text[i] in "{[":
            end = _closing(text, i) + 1
        else:
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
        entries.append((m.group(1), text[i:end].strip().rstrip(",;").strip()))
        i = end
    return entries


def nats_blocks(text: str, name: str) -> list[str]:
    """The bodies (inside the braces) of the top-level blocks ``name { ... }`` of ``text``."""
    return [v[1:-1] for k, v in nats_entries(text) if k == name and v.startswith("{")]


def nats_settings(text: str) -> dict[str, str]:
    """The plain ``key: value`` settings at the top level of ``text`` (quotes removed)."""
    out = {}
    for k, v in nats_entries(text):
        if not v.startswith(("{", "[")):
            out[k] = v.strip("\"'")
    return out
