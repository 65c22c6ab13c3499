"""nats-server lets in only the services' users: its authorization block is the one
services/common/nats_auth.py generates, with no other way in and no password but
references to the variables the Secret fills; and no command line of any container
carries a credential. Checked on every rendered target."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from services.common.nats_auth import authorization_conf
from tests.k8s.manifests import (
    K8S_DIR,
    NATS_PASSWORD_KEYS,
    TARGETS,
    Obj,
    all_containers,
    container_env,
    expand,
    nats_blocks,
    nats_entries,
    rendered,
)
from tests.k8s.nats_security import all_secrets, nats_conf, nats_server_container, where

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_CREDENTIAL_FLAG = re.compile(r"^--?(user|pass|password|token|auth|creds|nkey)(=|$)", re.I)


def test_the_authorization_file_is_generated_from_the_code() -> None:
    """base/nats-authorization.conf is `python -m services.common.nats_auth` verbatim."""
    text = (K8S_DIR / "base" / "nats-authorization.conf").read_text()
    assert text == authorization_conf(), (
        "deploy/k8s/base/nats-authorization.conf is stale: regenerate it with "
        "`.venv/bin/python -m services.common.nats_auth > deploy/k8s/base/nats-authorization.conf`"
    )


@pytest.mark.parametrize("target", TARGETS)
def test_nats_config_authorizes_only_the_services_users(target: str) -> None:
    """nats-server's configuration as mounted (includes resolved) has exactly the code's
    authorization block, no other way in (accounts, a default user, tokens), and no
    password but references to the environment variables the Secret fills."""
    objects = rendered(target)
    conf = nats_conf(objects)
    assert authorization_conf() in conf, f"{target}: nats.conf does not include the users"
    (block,) = nats_blocks(conf, "authorization")
    assert f"authorization {{{block}}}" in authorization_conf(), target
    keys = {k for k, _ in nats_entries(conf)}
    other_ways_in = {"accounts", "no_auth_user", "operator", "resolver", "system_account"}
    assert not keys & other_ways_in, f"{target}: {keys & other_ways_in}"
    values = re.findall(r"\b(password|pass|token|nkey)\s*[:=]\s*([^\s,}]+)", conf)
    referenced = set()
    for key, value in values:
        m = re.fullmatch(r"\$([A-Z_]+)", value)
        assert m and key == "password", f"{target}: {key} {value}: a literal credential"
        referenced.add(m.group(1))
    assert referenced == set(NATS_PASSWORD_KEYS), f"{target}: {referenced}"
    # Defined nowhere in the config, so nats-server takes them from its environment.
    assert not referenced & keys, f"{target}: a password variable set in the config"
    _, server = nats_server_container(objects)
    from_secret = {
        v["name"] for v in server.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert referenced <= from_secret, f"{target}: {referenced - from_secret} not from a Secret"


def _command_lines(container: Obj) -> Iterator[list[str]]:
    """Every command line the container runs: its own, its hooks' and its probes'."""
    yield [*container.get("command", []), *container.get("args", [])]
    handlers = [container.get(p, {}) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    handlers += container.get("lifecycle", {}).values()
    for handler in handlers:
        if "exec" in handler:
            yield list(handler["exec"].get("command", []))


@pytest.mark.parametrize("target", TARGETS)
def test_no_credential_on_a_command_line(target: str) -> None:
    """No command line of any container (its command and args, exec hooks and probes) has
    a credential flag (--user, --pass...), a reference to a variable from a Secret, or,
    expanded as the kubelet would, the value of any secret."""
    objects = rendered(target)
    secrets = all_secrets(objects)
    values = {v for data in secrets.values() for v in data.values()}
    for obj, c, _ in all_containers(objects):
        from_secrets = {
            v["name"] for v in c.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
        }
        env = container_env(c, objects, secrets, {"metadata.name": "pod-0"})
        for argv in _command_lines(c):
            for arg in argv:
                assert not _CREDENTIAL_FLAG.match(arg), f"{where(obj, c)}: {arg} in {argv}"
                refs = set(_VAR_REF.findall(arg)) & from_secrets
                assert not refs, f"{where(obj, c)}: {refs} from a Secret in {argv}"
                expanded = expand(arg, env)
                assert not any(v in expanded for v in values), f"{where(obj, c)}: a secret"
