"""The identity provider's signing keys, from its JWKS endpoint (AUTH_JWKS_URL).

A deployment behind an identity provider (Keycloak, Auth0, Okta, Google, an OIDC proxy)
verifies the tokens that provider issues with the public keys it publishes as a JSON Web
Key Set. The provider rotates them: a new key appears in the set (with a new ``kid``)
before tokens signed with it do, and the old one leaves after the last of its tokens has
expired. So the set is cached, refreshed when it is older than :data:`MAX_AGE_S`, and
fetched again when a token names a ``kid`` the cache does not hold, at most once every
:data:`MIN_REFETCH_S`: a stream of tokens with made-up ``kid`` values cannot turn the
jobs service into a flood of requests to the provider.

Only RS256 (RSA, 2048 bits or more) and ES256 (EC on P-256) signing keys are kept; each
key is bound to its one algorithm, so a token cannot pick another (no ``alg: none``, no
HS/RS confusion). A failed fetch keeps the keys already known: an outage of the provider
does not log everyone out before their keys are due to change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

log = logging.getLogger(__name__)

MIN_REFETCH_S = 60.0  # at most one fetch a minute for an unknown kid
MAX_AGE_S = 3600.0  # the set is fetched again after an hour, when a token comes
FETCH_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 1 << 20  # a key set is a few KiB
MAX_KEYS = 100
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A public key and the one algorithm tokens signed with it must name."""

    key: Any
    algorithm: str


def key_of_pem(pem: bytes) -> SigningKey:
    """The RS256 or ES256 key of a PEM public key (AUTH_JWT_PUBLIC_KEY), by its type."""
    return _signing_key(load_pem_public_key(pem))


def _signing_key(key: Any) -> SigningKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
        return SigningKey(key, "RS256")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"an EC key on {key.curve.name} (ES256 needs P-256)")
        return SigningKey(key, "ES256")
    raise ValueError(f"a {type(key).__name__} (RS256 or ES256 keys only)")


def parse_key_set(document: object) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document, by ``kid`` (a key without one is kept
    under ``""``). Keys of other types, curves or uses are skipped, not an error: a
    provider's set often holds encryption keys too."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JSON Web Key Set (no "keys" list)')
    keys: dict[str, SigningKey] = {}
    for jwk in document["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid", "")
        if not isinstance(kid, str):
            continue
        try:
            if jwk.get("kty") == "RSA":
                key = _signing_key(RSAAlgorithm.from_jwk(jwk))
            elif jwk.get("kty") == "EC":
                key = _signing_key(ECAlgorithm.from_jwk(jwk))
            else:
                continue
        except (ValueError, TypeError, KeyError, jwt.InvalidKeyError) as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc)
            continue
        if jwk.get("alg", key.algorithm) != key.algorithm:
            continue  # e.g. an RSA key meant for PS256: not one this service accepts
        keys[kid] = key
    return keys


class JwksKeys:
    """The key set at ``url``, cached; :meth:`prepare` makes sure the key a token names is
    loaded if it can be, :meth:`key_for` answers from the cache alone."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._client = client
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self.fetches = 0  # attempts, for tests and logs

    def key_for(self, kid: str | None) -> SigningKey | None:
        if kid is None:
            # A token without a kid is verifiable only against a set of one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def prepare(self, token: str) -> None:
        """Fetch the set when it is unknown or stale, or when the token names a ``kid`` not
        in it, unless a fetch was tried less than :data:`MIN_REFETCH_S` ago."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return  # the verifier refuses it
        if not self._due(kid):
            return
        async with self._lock:
            if self._due(kid):  # another request may have fetched while this one waited
                await self._fetch()

    def _due(self, kid: object) -> bool:
        now = self._clock()
        if self._tried_at is not None and now - self._tried_at < MIN_REFETCH_S:
            return False
        if self._fetched_at is None or now - self._fetched_at >= MAX_AGE_S:
            return True
        return isinstance(kid, str) and kid not in self._keys

    async def _fetch(self) -> None:
        self._tried_at = self._clock()
        self.fetches += 1
        try:
            document = await self._get()
            keys = parse_key_set(document)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed (%s): keeping %d known keys",
                        self._url, exc, len(self._keys))  # fmt: skip
            return
        added = keys.keys() - self._keys.keys()
        removed = self._keys.keys() - keys.keys()
        self._keys, self._fetched_at = keys, self._clock()
        if added or removed:
            log.info("JWKS from %s: %d keys (added %s, removed %s)",
                     self._url, len(keys), sorted(added), sorted(removed))  # fmt: skip

    async def _get(self) -> object:
        client = self._client or httpx.AsyncClient(timeout=FETCH_TIMEOUT_S)
        try:
            # Redirects are not followed: the key set comes from the URL configured.
            async with client.stream("GET", self._url, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise ValueError(f"a body over {MAX_BODY_BYTES} bytes")
            return json.loads(body)
        finally:
            if self._client is None:
                await client.aclose()
