"""What the NATS security tests (test_nats_users, test_nats_authorization,
test_nats_prod_tls, test_nats_login) read from rendered objects: nats-server's container
and configuration, a service's container, and every Secret key with a random value."""

from __future__ import annotations

from secrets import token_hex

from tests.k8s.manifests import (
    Obj,
    all_containers,
    containers,
    generated,
    label,
    named,
    nats_config,
    nats_secrets,
)


def where(obj: Obj, container: Obj) -> str:
    return f"{label(obj)} container {container['name']}"


def nats_server_container(objects: list[Obj]) -> tuple[Obj, Obj]:
    nats = named(objects, "StatefulSet", "nats")
    (container,) = containers(nats)
    return nats, container


def nats_conf(objects: list[Obj]) -> str:
    """nats-server's configuration as the pods read it: nats.conf, includes resolved."""
    return nats_config(generated(objects, "ConfigMap", "nats-config")["data"])


def all_secrets(objects: list[Obj]) -> dict[str, dict[str, str]]:
    """Every Secret key the objects read, with a random value (NATS' as nats_secrets())."""
    out = nats_secrets()
    for _, c, _ in all_containers(objects):
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                out.setdefault(ref["name"], {}).setdefault(ref["key"], token_hex(32))
    return out


def service_container(objects: list[Obj], deployment: str) -> tuple[Obj, Obj]:
    obj = named(objects, "Deployment", deployment)
    (container,) = containers(obj, init=False)
    return obj, container
