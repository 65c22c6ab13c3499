"""NATS is a trust boundary (services/common/nats_auth.py): nats-server refuses clients
without credentials, each service logs in as its own user with only the permissions it
needs, no password is in a ConfigMap or on a command line, and in overlays/prod the
services and the NATS nodes speak TLS. Checked on the rendered overlays, and by running
nats-server with each overlay's own configuration."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from secrets import token_hex
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest
import yaml
from nats.errors import Error as NatsError

from services.cli.stack import free_port
from services.common import bus
from services.common.nats_auth import IDENTITIES, authorization_conf
from services.common.settings import Settings
from tests.k8s.manifests import (
    K8S_DIR,
    NATS_CERTIFICATE_EXAMPLE,
    NATS_CLIENTS,
    NATS_PASSWORD_KEYS,
    NATS_TLS_SECRET,
    SECRET_NAME,
    TARGETS,
    Obj,
    all_containers,
    container_env,
    containers,
    expand,
    generated,
    is_app,
    label,
    local_paths,
    named,
    nats_blocks,
    nats_certificate,
    nats_config,
    nats_entries,
    nats_pod,
    nats_secrets,
    nats_settings,
    of_kind,
    pod_template,
    rendered,
    volume_mounts,
)

# What a NATS client can log in with; only the three services may have any of it.
NATS_CREDENTIALS = {"NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS"}
# Settings naming a file the process opens: it must be mounted where it points.
PATH_SETTINGS = (
    "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY", "NATS_CREDS", "GRPC_TLS_CERT",
    "GRPC_TLS_KEY", "AUTH_JWT_PUBLIC_KEY",
)  # fmt: skip
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_CREDENTIAL_FLAG = re.compile(r"^--?(user|pass|password|token|auth|creds|nkey)(=|$)", re.I)


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


def mounted_from(owner: Obj, container: Obj, path: str) -> tuple[Obj, str] | None:
    """(the volume, the key or file within it) that ``path`` is in the container, if any."""
    volumes = {v["name"]: v for v in (pod_template(owner) or {})["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and mount["name"] in volumes:
            return volumes[mount["name"]], path.removeprefix(prefix)
    return None


def secret_file(owner: Obj, container: Obj, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file ``path`` as mounted in the container; fails otherwise."""
    found = mounted_from(owner, container, path)
    assert found, f"{where(owner, container)}: {path} is on no volume it mounts"
    volume, file = found
    assert "secret" in volume, f"{where(owner, container)}: {path} is not from a Secret"
    source = volume["secret"]
    keys = {i["path"]: i["key"] for i in source.get("items", [])} or {file: file}
    assert file in keys, f"{where(owner, container)}: {path}: the Secret volume has no {file}"
    return source["secretName"], keys[file]


# --- (a) each service its own NATS user -------------------------------------------------


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


# --- (b) the authorization block, and no password in config or on a command line ---------


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


# --- (c) TLS in overlays/prod -----------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_services_speak_tls_exactly_when_nats_does(target: str) -> None:
    """Each service's NATS_URL is tls:// when nats-server requires TLS (overlays/prod) and
    nats:// otherwise (base, dev); every file setting (NATS_TLS_CA...) of every container
    points into a volume it mounts, so none starts without its file."""
    objects = rendered(target)
    tls = bool(nats_blocks(nats_conf(objects), "tls"))
    assert tls == (target == "overlays/prod"), f"{target}: TLS {'on' if tls else 'off'}"
    secrets = all_secrets(objects)
    for deployment in NATS_CLIENTS:
        obj, c = service_container(objects, deployment)
        env = container_env(c, objects, secrets)
        url = urlsplit(env["NATS_URL"])
        assert url.scheme == ("tls" if tls else "nats"), f"{where(obj, c)}: {env['NATS_URL']}"
        assert url.hostname == "nats" and url.port == 4222, where(obj, c)
        assert bool(env.get("NATS_TLS_CA")) == tls, where(obj, c)
    for obj, c, _ in all_containers(objects):
        if not is_app(c):
            continue
        env = container_env(c, objects, secrets)
        for name in PATH_SETTINGS:
            if env.get(name):
                assert mounted_from(obj, c, env[name]), f"{where(obj, c)}: {name} not mounted"


def test_prod_nats_requires_tls_with_the_certificate_from_a_secret() -> None:
    """overlays/prod's nats.conf has a tls block (client connections) and one in cluster
    (routes, mutual TLS), both reading the certificate, key and CA from the Secret
    prospect-nats-tls as the nats container mounts it; the routes dial tls://; monitoring
    stays plain HTTP for the probes and KEDA's scaler."""
    prod = rendered("overlays/prod")
    conf = nats_conf(prod)
    nats, server = nats_server_container(prod)
    top = nats_settings(conf)
    assert "http" in top and "https" not in top, "monitoring: the probes and KEDA use HTTP"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"].get("scheme", "HTTP") == "HTTP", probe
    assert not {"allow_non_tls"} & top.keys(), "plaintext clients allowed"
    (client_tls,) = nats_blocks(conf, "tls")
    (cluster,) = nats_blocks(conf, "cluster")
    (route_tls,) = nats_blocks(cluster, "tls")
    expected = {"cert_file": "tls.crt", "key_file": "tls.key", "ca_file": "ca.crt"}
    for block in (client_tls, route_tls):
        settings = nats_settings(block)
        assert float(settings["timeout"]) > 0
        assert settings.get("verify", "true") != "false" and "insecure" not in settings
        for setting, key in expected.items():
            assert secret_file(nats, server, settings[setting]) == (NATS_TLS_SECRET, key)
    routes = re.findall(r"(\w+)://[a-z0-9.-]+:6222", cluster)
    assert routes and set(routes) == {"tls"}, routes


def test_prod_services_mount_only_the_ca() -> None:
    """Each service trusts the CA of the TLS Secret (NATS_TLS_CA, ca.crt of a Secret
    volume holding that key only); the server's key is mounted in the nats pods only."""
    prod = rendered("overlays/prod")
    secrets = all_secrets(prod)
    for deployment in NATS_CLIENTS:
        obj, c = service_container(prod, deployment)
        env = container_env(c, prod, secrets)
        assert secret_file(obj, c, env["NATS_TLS_CA"]) == (NATS_TLS_SECRET, "ca.crt")
    nats, _ = nats_server_container(prod)
    for obj in [o for o in prod if pod_template(o)]:
        for volume in (pod_template(obj) or {})["spec"].get("volumes", []):
            source = volume.get("secret", {})
            if source.get("secretName") != NATS_TLS_SECRET or obj is nats:
                continue
            keys = [i["key"] for i in source.get("items", [])]
            assert keys == ["ca.crt"], f"{label(obj)} mounts {keys or 'all'} of the TLS Secret"


def test_the_certificate_covers_every_name_nats_is_dialled_by() -> None:
    """The example Certificate (cert-manager) writes the Secret the pods mount, for every
    name a client or a route dials (the nats Service's names in the namespace, each
    route's host), with server and client auth (a route's dialing end presents it too)."""
    prod = rendered("overlays/prod")
    cert = nats_certificate()
    nats, _ = nats_server_container(prod)
    namespace = nats["metadata"]["namespace"]
    svc = "nats"
    assert named(prod, "Service", svc)
    names = {svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc"}
    names.add(f"{svc}.{namespace}.svc.cluster.local")
    (cluster,) = nats_blocks(nats_conf(prod), "cluster")
    routes = re.findall(r"\w+://([a-z0-9.-]+):6222", cluster)
    assert len(routes) == nats["spec"]["replicas"], routes
    names |= set(routes)
    missing = names - set(cert["spec"]["dnsNames"])
    assert not missing, f"{NATS_CERTIFICATE_EXAMPLE.name} lacks {missing}"
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])
    assert cert["spec"]["issuerRef"]["name"], "an issuer"
    kustomization = yaml.safe_load((K8S_DIR / "overlays/prod/kustomization.yaml").read_text())
    assert NATS_CERTIFICATE_EXAMPLE.name not in kustomization["resources"], "a template only"


# --- nats-server, run with the overlays' own configuration -------------------------------


@contextmanager
def running_nats(target: str, tmp: Path, secrets: Mapping[str, Mapping[str, str]]) -> Iterator[int]:
    """nats-server as the overlay's nats-0 runs it (its command, mounted files and
    environment), on free local ports: the client port is yielded. Flags move the
    listeners to loopback (client, monitoring, and the cluster's when there is one)."""
    objects = rendered(target)
    argv, env, _ = nats_pod(objects, secrets, tmp)
    port, log = free_port(), tmp / "nats-server.log"
    argv += ["-a", "127.0.0.1", "-p", str(port), "-m", str(free_port()), "-l", str(log)]
    if nats_blocks(nats_conf(objects), "cluster"):
        argv += ["--cluster", f"nats://127.0.0.1:{free_port()}"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 15
        while not (log.exists() and "Server is ready" in log.read_text()):
            assert proc.poll() is None, f"nats-server exited: {proc.stderr and proc.stderr.read()}"
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


async def _login(url: str, **options: Any) -> None:
    async def quiet(_: Exception) -> None:
        pass

    nc = await nats.connect(
        url, allow_reconnect=False, connect_timeout=5, error_cb=quiet, **options
    )
    try:
        await nc.flush(timeout=5)
    finally:
        await nc.close()


@pytest.mark.e2e
def test_dev_nats_refuses_whoever_has_not_a_services_password(tmp_path: Path) -> None:
    """overlays/dev's nats-server lets each service in with its own password, and nobody
    without credentials, with a wrong password, or with another user's password."""
    secrets = nats_secrets()
    passwords = secrets[SECRET_NAME]
    with running_nats("overlays/dev", tmp_path, secrets) as port:
        url = f"nats://127.0.0.1:{port}"
        for user, identity in IDENTITIES.items():
            asyncio.run(_login(url, user=user, password=passwords[identity.password_env]))
        other = passwords[IDENTITIES["discovery"].password_env]
        for options in ({}, {"user": "jobs", "password": "wrong"},
                        {"user": "jobs", "password": other}):  # fmt: skip
            with pytest.raises(NatsError, match="Authorization Violation"):
                asyncio.run(_login(url, **options))


@pytest.mark.e2e
def test_prod_nats_serves_the_services_over_tls_only(tmp_path: Path) -> None:
    """overlays/prod's nats-server, with a certificate issued for the example
    Certificate's names, tells every client TLS is required; each service, with only its
    mounted ca.crt (its own TLS context, bus.tls_context) and its user, logs in over TLS to
    the host of its NATS_URL; a client that does not trust that CA cannot."""
    prod = rendered("overlays/prod")
    secrets = all_secrets(prod)
    with running_nats("overlays/prod", tmp_path / "nats-0", secrets) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            info = raw.makefile("rb").readline().decode()
        assert info.startswith("INFO ") and json.loads(info[5:])["tls_required"] is True
        for deployment in NATS_CLIENTS:
            obj, c = service_container(prod, deployment)
            env = container_env(c, prod, secrets)
            mounts = volume_mounts(obj, c, prod, secrets, tmp_path / deployment)
            nats_env = {k: local_paths(v, mounts) for k, v in env.items() if k.startswith("NATS_")}
            url = urlsplit(nats_env.pop("NATS_URL"))
            settings = Settings.from_env(nats_env)
            asyncio.run(
                _login(
                    f"tls://127.0.0.1:{port}",
                    user=settings.nats_user,
                    password=settings.nats_password,
                    tls=bus.tls_context(settings),
                    tls_hostname=url.hostname,
                )
            )
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(
                _login(
                    f"tls://127.0.0.1:{port}",
                    user=settings.nats_user,
                    password=settings.nats_password,
                    tls=ssl.create_default_context(),
                    tls_hostname=url.hostname,
                )
            )
