"""A fake identity provider: its JWKS endpoint on 127.0.0.1 (a real HTTP server in a
daemon thread) and the private keys behind it, to issue RS256 and ES256 tokens the way
Keycloak, Auth0 or Okta would. Keys can be added and removed (rotation), and the endpoint
can be made to fail, redirect or answer an oversized body."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWKS_PATH = "/.well-known/jwks.json"


@dataclass(frozen=True)
class IssuerKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        as_jwk = RSAAlgorithm.to_jwk if self.algorithm == "RS256" else ECAlgorithm.to_jwk
        out: dict[str, Any] = as_jwk(public, as_dict=True)
        return {**out, "kid": self.kid, "use": "sig", "alg": self.algorithm}


def new_key(algorithm: str, kid: str | None = None) -> IssuerKey:
    private: Any
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return IssuerKey(kid or f"{algorithm.lower()}-{secrets.token_hex(4)}", algorithm, private)


class FakeIdentityProvider:
    """``with FakeIdentityProvider() as idp:`` serves ``idp.jwks_url``; ``idp.token(...)``
    signs with its current key (or one given)."""

    def __init__(self, *algorithms: str) -> None:
        self.keys: list[IssuerKey] = [new_key(a) for a in algorithms or ("RS256", "ES256")]
        self.fetches = 0
        self.mode = "ok"  # ok, error, redirect, huge
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), daemon=True)

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{JWKS_PATH}"

    def document(self) -> dict[str, Any]:
        # An encryption key and an unsupported curve, as real sets have: to be skipped.
        other = new_key("ES256")
        enc = {**other.jwk(), "kid": "enc-key", "use": "enc"}
        return {"keys": [enc, *(key.jwk() for key in self.keys)]}

    def rotate(self, algorithm: str = "RS256", *, drop_old: bool = False) -> IssuerKey:
        key = new_key(algorithm)
        with self._lock:
            self.keys = [key] if drop_old else [*self.keys, key]
        return key

    def token(self, sub: str, key: IssuerKey | None = None, **claims: Any) -> str:
        key = key or self.keys[-1]
        now = int(time.time())
        payload = {"sub": sub, "iat": now, "exp": now + 600, **claims}
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with idp._lock:
                    idp.fetches += 1
                    mode, body = idp.mode, json.dumps(idp.document()).encode()
                if self.path != JWKS_PATH or mode == "error":
                    self.send_response(404 if self.path != JWKS_PATH else 503)
                    self.end_headers()
                    return
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", JWKS_PATH)
                    self.end_headers()
                    return
                if mode == "huge":
                    body = b'{"keys": [], "pad": "' + b"x" * (2 << 20) + b'"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FakeIdentityProvider:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
