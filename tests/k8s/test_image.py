"""The Dockerfile builds the image the manifests expect: pinned bases, stubs generated in
the build, a non-root numeric user matching the pods' runAsUser, nothing built in the final
stage, the work tree kept out by .dockerignore, and the tag the manifests pin. No Docker
engine is needed: the file is read, not built (``make image`` builds it)."""

from __future__ import annotations

import re

from tests.k8s.manifests import (
    APP_IMAGE,
    REPO_ROOT,
    TARGETS,
    all_containers,
    image_tag,
    is_app,
    pod_template,
    project_version,
    rendered,
    workloads,
)

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
# Instructions with their continuation lines joined and comment lines dropped.
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def stages() -> list[list[str]]:
    out: list[list[str]] = []
    for instruction in INSTRUCTIONS:
        if instruction.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def test_bases_are_pinned_slim_python() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.M))
    bases = [s[0].split()[1] for s in stages()]
    assert len(bases) >= 2, "a multi-stage build"
    for base in bases:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base


def test_stubs_are_generated_in_the_build_not_copied() -> None:
    build = " ".join(stages()[0])
    assert "grpc_tools.protoc" in build and "--grpc_python_out" in build
    copied = [i.split()[1:-1] for i in stages()[0] if i.upper().startswith("COPY ")]
    assert not [src for srcs in copied for src in srcs if src.startswith("prospect")], copied
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[[line.startswith("#") for line in ignored].index(False)] == "*"
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "requirements", "protos", "services"}, allowed


def test_final_stage_builds_nothing_and_runs_as_the_pods_user() -> None:
    final = stages()[-1]
    text = " ".join(final)
    assert not re.search(r"\b(apt-get|apk)\s+(install|add)|pip install|gcc|build-essential", text)
    assert any(i.startswith("COPY --from=") for i in final), "the virtualenv from the build"
    (user,) = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    uid, gid = (int(x) for x in user.split(":"))
    assert uid > 0 and gid > 0, "a non-root numeric user"
    for target in TARGETS:
        for obj in workloads(rendered(target)):
            spec = (pod_template(obj) or {})["spec"]
            if any(is_app(c) for c in spec["containers"]):
                sc = spec["securityContext"]
                assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, gid), obj["metadata"]["name"]
    cmd = [i for i in final if i.startswith("CMD ")][-1]
    assert cmd == 'CMD ["python", "-m", "services.jobs"]', cmd


def test_manifests_pin_the_project_version() -> None:
    """`make image` tags the image with pyproject's version; the base pins that tag."""
    version = project_version()
    tags = {
        image_tag(c["image"])
        for target in TARGETS
        for _, c, _ in all_containers(rendered(target))
        if is_app(c)
    }
    assert tags == {version}, f"{APP_IMAGE} tags {tags}, project version {version}"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "docker build -t $(IMAGE):$(IMAGE_TAG) ." in makefile
