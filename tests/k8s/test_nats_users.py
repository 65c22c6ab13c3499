"""Each service logs in to NATS as its own user (services/common/nats_auth.py), with a
password from a prospect-secrets key of its own, the one nats-server reads that user's
password from; no other container gets a NATS credential. Checked on every rendered
target."""

from __future__ import annotations

import pytest

from services.common.nats_auth import IDENTITIES
from tests.k8s.manifests import (
    NATS_CLIENTS,
    NATS_PASSWORD_KEYS,
    SECRET_NAME,
    TARGETS,
    all_containers,
    container_env,
    generated,
    of_kind,
    rendered,
)
from tests.k8s.nats_security import all_secrets, nats_server_container, service_container, where

# What a NATS client can log in with; only the three services may have any of it.
NATS_CREDENTIALS = {"NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS"}


@pytest.mark.parametrize("target", TARGETS)
def test_each_service_logs_in_as_its_own_nats_user(target: str) -> None:
    """Every Deployment sets its own NATS_USER (a literal in its container, not a shared
    ConfigMap key), one of nats_auth's identities, and reads NATS_PASSWORD from a key of
    prospect-secrets of its own, the key nats-server reads that user's password from."""
    objects = rendered(target)
    assert sorted(NATS_CLIENTS.values()) == sorted(IDENTITIES), "one Deployment per identity"
    assert {d["metadata"]["name"] for d in of_kind(objects, "Deployment")} >= NATS_CLIENTS.keys()
    _, server = nats_server_container(objects)
    server_refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]
        for v in server.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    secrets = all_secrets(objects)
    config = generated(objects, "ConfigMap", "prospect-config")["data"]
    assert not NATS_CREDENTIALS & config.keys(), "NATS credentials in prospect-config"
    passwords = set()
    for deployment, user in NATS_CLIENTS.items():
        obj, c = service_container(objects, deployment)
        env = {v["name"]: v for v in c.get("env", [])}
        assert env.get("NATS_USER") == {"name": "NATS_USER", "value": user}, where(obj, c)
        ref = env["NATS_PASSWORD"].get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{where(obj, c)}: NATS_PASSWORD not from a Secret"
        identity = IDENTITIES[user]
        assert (ref["name"], ref["key"]) == (SECRET_NAME, identity.password_env), where(obj, c)
        assert not ref.get("optional"), f"{where(obj, c)}: NATS_PASSWORD is optional"
        # nats-server reads this user's password from the very same key.
        server_ref = server_refs.get(identity.password_env)
        assert server_ref, f"nats-server does not read ${identity.password_env}"
        assert (server_ref["name"], server_ref["key"]) == (ref["name"], ref["key"]), deployment
        for source in c.get("envFrom", []):
            assert "secretRef" not in source, f"{where(obj, c)}: envFrom a whole Secret"
        # What the process gets, envFrom and env together.
        resolved = container_env(c, objects, secrets)
        assert resolved["NATS_USER"] == user, where(obj, c)
        assert resolved["NATS_PASSWORD"] == secrets[SECRET_NAME][identity.password_env]
        assert not {"NATS_TOKEN", "NATS_CREDS"} & resolved.keys(), where(obj, c)
        passwords.add(ref["key"])
    assert len(passwords) == len(NATS_CLIENTS), "each service has a password of its own"


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_services_get_nats_credentials(target: str) -> None:
    """Migrations, retention, PostgreSQL (no NATS client among them) get no NATS
    credential at all; nats-server gets the users' passwords and nothing else of NATS."""
    objects = rendered(target)
    secrets = all_secrets(objects)
    password_values = set(secrets[SECRET_NAME][k] for k in NATS_PASSWORD_KEYS)
    clients = [service_container(objects, d)[1] for d in NATS_CLIENTS]
    _, server = nats_server_container(objects)
    for obj, c, _ in all_containers(objects):
        if any(c is client for client in clients):
            continue
        env = container_env(c, objects, secrets, {"metadata.name": "pod-0"})
        if c is server:
            assert not NATS_CREDENTIALS & env.keys(), f"{where(obj, c)}: {env.keys()}"
            assert set(NATS_PASSWORD_KEYS) <= env.keys(), where(obj, c)
            continue
        assert not (NATS_CREDENTIALS | set(NATS_PASSWORD_KEYS)) & env.keys(), where(obj, c)
        assert not password_values & set(env.values()), f"{where(obj, c)}: a NATS password"
