"""Tokens of an identity provider verified with the keys of its JWKS endpoint (a fake one,
served over real HTTP on loopback): RS256 and ES256 accepted; a rotated-in key picked up
on first sight; unknown ``kid`` values fetching at most once a minute; each key bound to
its algorithm; a failing, redirecting or oversized endpoint keeping the keys known."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from services.common.errors import ConfigError
from services.common.settings import Settings
from services.jobs.auth import Principal, TokenVerifier, Unauthenticated
from services.jobs.jwks import MAX_AGE_S, MIN_REFETCH_S, JwksKeys, parse_key_set
from tests.clock import Clock
from tests.e2e import tokens as t
from tests.fakes.identity_provider import FakeIdentityProvider, new_key

PAGE = {"PAGE_TOKEN_SECRET": secrets.token_hex(32)}


@pytest.fixture
def idp() -> Iterator[FakeIdentityProvider]:
    with FakeIdentityProvider("RS256", "ES256") as provider:
        yield provider


@pytest.fixture
def clock() -> Clock:
    return Clock()


def verifier_for(idp: FakeIdentityProvider, clock: Clock) -> tuple[TokenVerifier, JwksKeys]:
    settings = Settings.from_env({"AUTH_MODE": "jwt", "AUTH_JWKS_URL": idp.jwks_url, **PAGE})
    keys = JwksKeys(idp.jwks_url, clock=clock)
    return TokenVerifier(settings, jwks=keys), keys


async def refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.authenticate(token)
    assert str(caught.value) == "invalid token"


async def test_rs256_and_es256_tokens_of_the_provider_are_accepted(
    idp: FakeIdentityProvider, clock: Clock
) -> None:
    verifier, keys = verifier_for(idp, clock)
    rs, es = idp.keys
    assert await verifier.authenticate(idp.token("alice", rs)) == Principal("alice")
    assert await verifier.authenticate(idp.token("bob", es, role="service")) == Principal(
        "bob", "service"
    )
    assert keys.fetches == 1  # the set is cached: one fetch for both


async def test_a_rotated_in_key_is_fetched_once_on_first_sight(
    idp: FakeIdentityProvider, clock: Clock
) -> None:
    verifier, keys = verifier_for(idp, clock)
    await verifier.authenticate(idp.token("alice"))
    clock.now += MIN_REFETCH_S  # the provider rotates a minute later
    new = idp.rotate("ES256", drop_old=True)
    assert await verifier.authenticate(idp.token("alice", new)) == Principal("alice")
    assert await verifier.authenticate(idp.token("carol", new)) == Principal("carol")
    assert keys.fetches == 2


async def test_unknown_kids_fetch_at_most_once_a_minute(
    idp: FakeIdentityProvider, clock: Clock
) -> None:
    verifier, keys = verifier_for(idp, clock)
    await verifier.authenticate(idp.token("alice"))
    clock.now += MIN_REFETCH_S
    stranger = new_key("RS256")  # not published: every token names an unknown kid
    for n in range(50):
        forged = jwt.encode(
            t.claims("mallory"), stranger.private, algorithm="RS256", headers={"kid": f"made-{n}"}
        )
        await refused(verifier, forged)
    assert keys.fetches == 2  # one refetch for the whole flood
    assert idp.fetches == 2
    # A key published within that minute waits for the next one.
    published = idp.rotate("RS256")
    await refused(verifier, idp.token("alice", published))
    clock.now += MIN_REFETCH_S
    assert await verifier.authenticate(idp.token("alice", published)) == Principal("alice")
    await refused(verifier, idp.token("mallory", stranger))
    assert keys.fetches == 3


async def test_each_key_is_bound_to_its_algorithm(idp: FakeIdentityProvider, clock: Clock) -> None:
    verifier, _ = verifier_for(idp, clock)
    rs, es = idp.keys
    claims = t.claims("mallory")
    public_pem = rs.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # HS256 with the RSA public key as the HMAC secret, under the RSA key's kid.
    await refused(verifier, t.hand_signed({"alg": "HS256", "kid": rs.kid}, claims, public_pem))
    # alg: none.
    await refused(verifier, t.alg_none(claims))
    # An ES256 signature under the RSA key's kid.
    es_as_rs = jwt.encode(claims, es.private, algorithm="ES256", headers={"kid": rs.kid})
    await refused(verifier, es_as_rs)
    # A token without a kid, while the set holds two keys.
    await refused(verifier, jwt.encode(claims, rs.private, algorithm="RS256"))


async def test_a_failing_endpoint_keeps_the_keys_known(
    idp: FakeIdentityProvider, clock: Clock
) -> None:
    verifier, keys = verifier_for(idp, clock)
    token = idp.token("alice")
    await verifier.authenticate(token)
    for mode in ("error", "redirect", "huge"):
        idp.mode = mode
        clock.now += MAX_AGE_S  # due for a refresh, which fails
        assert await verifier.authenticate(token) == Principal("alice")
    assert keys.fetches == 4
    idp.mode = "ok"
    clock.now += MIN_REFETCH_S
    new = idp.rotate("ES256", drop_old=True)
    assert await verifier.authenticate(idp.token("alice", new)) == Principal("alice")
    clock.now += MAX_AGE_S
    await refused(verifier, token)  # the old key left the set with the refresh


async def test_no_keys_until_the_endpoint_answers(idp: FakeIdentityProvider, clock: Clock) -> None:
    idp.mode = "error"
    verifier, _ = verifier_for(idp, clock)
    await refused(verifier, idp.token("alice"))
    idp.mode = "ok"
    clock.now += MIN_REFETCH_S
    assert await verifier.authenticate(idp.token("alice")) == Principal("alice")


def test_the_key_set_keeps_only_rs256_and_es256_signing_keys() -> None:
    rs, es, other = new_key("RS256", "rs"), new_key("ES256", "es"), new_key("RS256")
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    weak = {**RSAAlgorithm.to_jwk(weak_rsa, as_dict=True), "kid": "weak"}
    p384_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384 = {**ECAlgorithm.to_jwk(p384_key, as_dict=True), "kid": "p384"}
    document = {
        "keys": [
            rs.jwk(),
            es.jwk(),
            {**other.jwk(), "kid": "ps", "alg": "PS256"},
            {**other.jwk(), "kid": "enc", "use": "enc"},
            weak,
            p384,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            "not a key",
        ]
    }
    assert sorted(parse_key_set(document)) == ["es", "rs"]
    with pytest.raises(ValueError):
        parse_key_set({"nokeys": []})


def test_es256_public_key_pem_is_accepted(tmp_path: Path) -> None:
    key = new_key("ES256", "pem")
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "es.pem").write_bytes(pem)
    env = {"AUTH_MODE": "jwt", "AUTH_JWT_PUBLIC_KEY": str(tmp_path / "es.pem"), **PAGE}
    verifier = TokenVerifier(Settings.from_env(env))
    good = jwt.encode(t.claims("dana"), key.private, algorithm="ES256")
    assert verifier.verify(good) == Principal("dana")
    rs = new_key("RS256")
    with pytest.raises(Unauthenticated):
        verifier.verify(jwt.encode(t.claims("dana"), rs.private, algorithm="RS256"))


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"AUTH_JWKS_URL": "http://idp.example.com/jwks"}, "http only to a loopback host"),
        ({"AUTH_JWKS_URL": "ftp://idp.example.com/jwks"}, "must be an https:// URL"),
        ({"AUTH_JWKS_URL": "https://u:p@idp.example.com/jwks"}, "must be an https:// URL"),
        (
            {"AUTH_JWKS_URL": "https://idp.example.com/jwks", "AUTH_JWT_SECRET": "x" * 40},
            "exactly one of",
        ),
    ],
)
def test_jwks_url_settings_are_checked(extra: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings.from_env({"AUTH_MODE": "jwt", **PAGE, **extra})


def test_an_https_or_loopback_jwks_url_is_accepted() -> None:
    for url in ("https://idp.example.com/.well-known/jwks.json", "http://127.0.0.1:9/jwks"):
        settings = Settings.from_env({"AUTH_MODE": "jwt", "AUTH_JWKS_URL": url, **PAGE})
        assert settings.auth_jwks_url == url
