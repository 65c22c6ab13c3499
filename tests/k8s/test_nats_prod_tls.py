"""TLS in overlays/prod: the services dial tls:// exactly when nats-server requires TLS
(prod only), every file setting points into a mounted volume, nats-server's client and
route TLS read the certificate from the Secret prospect-nats-tls, the services mount only
its CA, and the example Certificate covers every name NATS is dialled by."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import yaml

from tests.k8s.manifests import (
    K8S_DIR,
    NATS_CERTIFICATE_EXAMPLE,
    NATS_CLIENTS,
    NATS_TLS_SECRET,
    TARGETS,
    Obj,
    all_containers,
    container_env,
    is_app,
    label,
    named,
    nats_blocks,
    nats_certificate,
    nats_settings,
    pod_template,
    rendered,
)
from tests.k8s.nats_security import (
    all_secrets,
    nats_conf,
    nats_server_container,
    service_container,
    where,
)

# Settings naming a file the process opens: it must be mounted where it points.
PATH_SETTINGS = (
    "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY", "NATS_CREDS", "GRPC_TLS_CERT",
    "GRPC_TLS_KEY", "AUTH_JWT_PUBLIC_KEY",
)  # fmt: skip


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
