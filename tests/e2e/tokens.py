"""Tokens, keys and certificates for the security tests: good ones, and the hostile ones an
attacker would try (forged, expired, ``alg: none``, HS/RS confusion)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import REPO_ROOT


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def claims(
    sub: str | None = "alice",
    *,
    ttl_s: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    role: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A claim set; ``extra`` overrides or adds claims (``exp=None`` drops ``exp``)."""
    now = int(time.time())
    out: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl_s}
    if issuer:
        out["iss"] = issuer
    if audience:
        out["aud"] = audience
    if role:
        out["role"] = role
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def hs256(secret: str | bytes, payload: dict[str, Any]) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def rs256(private_pem: bytes, payload: dict[str, Any]) -> str:
    return jwt.encode(payload, private_pem, algorithm="RS256")


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """An HS256-style token built by hand, with any header and any HMAC key (PyJWT refuses
    a PEM as an HMAC secret, which is exactly what the HS/RS confusion attack uses)."""
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    ).encode()
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + b64url(signature)


def alg_none(payload: dict[str, Any]) -> str:
    """``{"alg": "none"}`` header, the payload, and an empty signature."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}."


def hs_rs_confusion(public_pem: bytes, payload: dict[str, Any]) -> str:
    """HS256 signed with the server's RSA *public* key PEM as the HMAC secret."""
    return hand_signed({"alg": "HS256", "typ": "JWT"}, payload, public_pem)


def tampered(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its original signature kept."""
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    return f"{header}.{b64url(json.dumps(data).encode())}.{signature}"


def bearer(token: str) -> list[tuple[str, str]]:
    """gRPC call metadata carrying ``token``."""
    return [("authorization", f"Bearer {token}")]


def rsa_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a fresh 2048-bit RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for localhost and 127.0.0.1, valid for a day; the certificate is
    its own CA, so clients pass it as the root to trust."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# -- calling the API (sync gRPC) ----------------------------------------------------------

RPC_TIMEOUT = 15.0


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """(code, details) of a call that must fail."""
    try:
        result = call()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError(f"expected an error, got {result!r}")


def first_update(
    stub: jobs_pb2_grpc.JobServiceStub,
    request: jobs_pb2.WatchJobRequest,
    metadata: Sequence[tuple[str, str]] | None,
) -> jobs_pb2.JobUpdate | None:
    """The first update of a WatchJob stream (None if it ended at once); then cancel it."""
    stream = stub.WatchJob(request, metadata=metadata, timeout=RPC_TIMEOUT)
    try:
        return next(stream, None)
    finally:
        stream.cancel()


def watch_to_end(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, metadata: Sequence[tuple[str, str]]
) -> jobs_pb2.Job:
    """Follow a job to its terminal snapshot."""
    last = None
    request = jobs_pb2.WatchJobRequest(job_id=job_id)
    for update in stub.WatchJob(request, metadata=metadata, timeout=120):
        last = update.job
    assert last is not None and last.status in TERMINAL, last
    return last


TERMINAL = frozenset(
    {jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED}
)


Metadata = Sequence[tuple[str, str]]
RPCS = ("SubmitCampaign", "GetJob", "ListJobs", "WatchJob", "CancelJob", "ListLeads")
UNKNOWN_JOB = "job_" + "ab" * 16  # well formed, never issued


def config(location: str = "Portland, OR", max_results: int = 3) -> jobs_pb2.CampaignConfig:
    """A small valid campaign."""
    return jobs_pb2.CampaignConfig(
        business_type="bakery",
        location=location,
        max_results=max_results,
        min_confidence_score=0,
        verify_emails=True,
    )


def submit(stub: jobs_pb2_grpc.JobServiceStub, md: Metadata | None, **kw: str) -> str:
    """Submit :func:`config` (``kw``: idempotency_key, on_behalf_of); the job id."""
    request = jobs_pb2.SubmitCampaignRequest(config=config())
    for name, value in kw.items():  # string fields only
        setattr(request, name, value)
    return str(stub.SubmitCampaign(request, metadata=md, timeout=RPC_TIMEOUT).job_id)


def invoke(
    stub: jobs_pb2_grpc.JobServiceStub, rpc: str, md: Metadata | None, job_id: str = UNKNOWN_JOB
) -> object:
    """One plain call of ``rpc`` (naming ``job_id`` where it takes one)."""
    if rpc == "SubmitCampaign":
        return submit(stub, md)
    if rpc == "ListJobs":
        return stub.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md, timeout=RPC_TIMEOUT)
    if rpc == "WatchJob":
        return first_update(stub, jobs_pb2.WatchJobRequest(job_id=job_id), md)
    kinds = {
        "GetJob": jobs_pb2.GetJobRequest,
        "CancelJob": jobs_pb2.CancelJobRequest,
        "ListLeads": jobs_pb2.ListLeadsRequest,
    }
    return getattr(stub, rpc)(kinds[rpc](job_id=job_id), metadata=md, timeout=RPC_TIMEOUT)


def job_ids(stub: jobs_pb2_grpc.JobServiceStub, md: Metadata) -> set[str]:
    """Ids of the caller's jobs (up to 500)."""
    page = stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=500), metadata=md, timeout=10)
    return {job.id for job in page.jobs}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m services.cli args...``; no PROSPECT_*/AUTH_* from the caller's environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PROSPECT_", "AUTH_"))}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cancel_all(stub: jobs_pb2_grpc.JobServiceStub, md: Metadata) -> None:
    """Cancel every unfinished job of the caller."""
    for job_id in job_ids(stub, md):
        try:
            stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=md, timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def health_status(channel: grpc.Channel) -> int:
    """The overall grpc.health.v1 status of the server behind ``channel``."""
    request = health_pb2.HealthCheckRequest(service="")
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)
