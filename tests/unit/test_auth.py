"""The bearer-token verifier of the jobs service (HS256 and RS256) and the settings of
AUTH_MODE=jwt: valid tokens give a principal; every forged, stale or confused token is the
same generic "invalid token"."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ConfigError
from services.common.settings import Settings
from services.jobs.auth import (
    Principal,
    TokenVerifier,
    Unauthenticated,
    bearer_token,
    mint_token,
)
from services.jobs.server import check_auth_mode
from tests.e2e import tokens as t

SECRET = "unit-test-secret-with-enough-bytes-for-hs256"
# AUTH_MODE=jwt, with the page-token secret it requires.
JWT = {"AUTH_MODE": "jwt", "PAGE_TOKEN_SECRET": "unit-test-page-token-secret-of-32-bytes+"}
ISSUER = "https://issuer.example"
AUDIENCE = "prospect-jobs"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    return t.rsa_keypair()


@pytest.fixture
def public_pem_path(tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> Path:
    path = tmp_path / "jwt-public.pem"
    path.write_bytes(rsa_keys[1])
    return path


@pytest.fixture
def hs_verifier() -> TokenVerifier:
    env = {**JWT, "AUTH_JWT_SECRET": SECRET}
    return TokenVerifier(
        Settings.from_env({**env, "AUTH_JWT_ISSUER": ISSUER, "AUTH_JWT_AUDIENCE": AUDIENCE})
    )


@pytest.fixture
def rs_verifier(public_pem_path: Path) -> TokenVerifier:
    env = {**JWT, "AUTH_JWT_PUBLIC_KEY": str(public_pem_path)}
    return TokenVerifier(
        Settings.from_env({**env, "AUTH_JWT_ISSUER": ISSUER, "AUTH_JWT_AUDIENCE": AUDIENCE})
    )


def good(**overrides: object) -> dict[str, object]:
    """Claims the configured verifiers accept, with ``overrides`` applied (None drops one)."""
    payload: dict[str, object] = {**t.claims("alice", issuer=ISSUER, audience=AUDIENCE)}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def rejected(verifier: TokenVerifier, token: str) -> None:
    """The token is refused with the one generic message, whatever check failed."""
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert str(caught.value) == "invalid token"


# -- valid tokens -------------------------------------------------------------------------


def test_hs256_user_token_gives_the_user(hs_verifier: TokenVerifier) -> None:
    principal = hs_verifier.verify(t.hs256(SECRET, good()))
    assert principal == Principal("alice", "user")
    assert not principal.is_service


def test_hs256_service_token_is_marked_service(hs_verifier: TokenVerifier) -> None:
    principal = hs_verifier.verify(t.hs256(SECRET, good(sub="scheduler", role="service")))
    assert principal == Principal("scheduler", "service")
    assert principal.is_service


def test_rs256_token_gives_the_user(
    rs_verifier: TokenVerifier, rsa_keys: tuple[bytes, bytes]
) -> None:
    assert rs_verifier.verify(t.rs256(rsa_keys[0], good())) == Principal("alice", "user")


def test_mint_token_round_trips(rs_verifier: TokenVerifier, rsa_keys: tuple[bytes, bytes]) -> None:
    settings = Settings.from_env({**JWT, "AUTH_JWT_SECRET": SECRET})
    hs = mint_token(SECRET, "bob", role="service", ttl_s=60)
    assert TokenVerifier(settings).verify(hs) == Principal("bob", "service")
    rs = mint_token(
        rsa_keys[0].decode(), "carol", issuer=ISSUER, audience=AUDIENCE, algorithm="RS256"
    )
    assert rs_verifier.verify(rs) == Principal("carol", "user")


def test_issuer_and_audience_are_not_checked_when_not_configured() -> None:
    verifier = TokenVerifier(Settings.from_env({**JWT, "AUTH_JWT_SECRET": SECRET}))
    token = t.hs256(SECRET, t.claims("dave", issuer="anyone", audience="anything"))
    assert verifier.verify(token).user_id == "dave"


# -- refused tokens -----------------------------------------------------------------------

NOW = int(time.time())


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(good(exp=NOW - 3600), id="expired"),
        pytest.param(good(nbf=NOW + 3600), id="not-yet-valid"),
        pytest.param(good(iss="https://evil.example"), id="wrong-issuer"),
        pytest.param(good(aud="someone-else"), id="wrong-audience"),
        pytest.param(t.claims("alice", audience=AUDIENCE), id="no-issuer"),
        pytest.param(t.claims("alice", issuer=ISSUER), id="no-audience"),
        pytest.param(good(exp=None), id="no-exp"),
        pytest.param(good(sub=None), id="no-sub"),
        pytest.param(good(sub=""), id="empty-sub"),
        pytest.param(good(sub=12345), id="numeric-sub"),
        pytest.param(good(sub="x" * 5000), id="huge-sub"),
        pytest.param(good(sub="al\nice"), id="control-char-sub"),
        pytest.param(good(exp="tomorrow"), id="non-numeric-exp"),
    ],
)
def test_bad_claims_are_refused(
    hs_verifier: TokenVerifier,
    rs_verifier: TokenVerifier,
    rsa_keys: tuple[bytes, bytes],
    payload: dict[str, object],
) -> None:
    rejected(hs_verifier, t.hs256(SECRET, payload))
    rejected(rs_verifier, t.rs256(rsa_keys[0], payload))


def test_bad_signatures_are_refused(
    hs_verifier: TokenVerifier, rs_verifier: TokenVerifier, rsa_keys: tuple[bytes, bytes]
) -> None:
    rejected(hs_verifier, t.hs256(SECRET + "x", good()))
    rejected(hs_verifier, t.tampered(t.hs256(SECRET, good()), sub="bob"))
    rejected(hs_verifier, t.tampered(t.hs256(SECRET, good()), role="service"))
    other_private, _ = t.rsa_keypair()
    rejected(rs_verifier, t.rs256(other_private, good()))
    rejected(rs_verifier, t.tampered(t.rs256(rsa_keys[0], good()), sub="bob"))


def test_alg_none_is_refused(hs_verifier: TokenVerifier, rs_verifier: TokenVerifier) -> None:
    for verifier in (hs_verifier, rs_verifier):
        rejected(verifier, t.alg_none(good()))
        rejected(verifier, t.alg_none(good()) + "c2lnbmF0dXJl")  # with some signature
        rejected(verifier, t.hand_signed({"alg": "None"}, good(), b""))


def test_hs_rs_confusion_is_refused(
    rs_verifier: TokenVerifier, rsa_keys: tuple[bytes, bytes]
) -> None:
    """The classic attack: the RSA public key (public!) used as an HMAC secret."""
    public_pem = rsa_keys[1]
    rejected(rs_verifier, t.hs_rs_confusion(public_pem, good()))
    rejected(rs_verifier, t.hs_rs_confusion(public_pem.strip(), good()))
    rejected(rs_verifier, t.hand_signed({"alg": "HS512"}, good(), public_pem))


def test_the_other_algorithm_is_refused(
    hs_verifier: TokenVerifier, rs_verifier: TokenVerifier, rsa_keys: tuple[bytes, bytes]
) -> None:
    rejected(hs_verifier, t.rs256(rsa_keys[0], good()))  # RS token, HS server
    rejected(rs_verifier, t.hs256(SECRET, good()))  # HS token, RS server
    rejected(hs_verifier, t.hand_signed({"alg": "HS384"}, good(), SECRET.encode()))


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "a.b",
        "a.b.c",
        "..",
        "...",
        "é.ü.ß",
        "Bearer abc",
        "null",
        "{}",
        "eyJ." * 100,
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "\x00\x01\x02",
        "x" * 100_000,
    ],
)
def test_garbage_is_refused(hs_verifier: TokenVerifier, garbage: str) -> None:
    rejected(hs_verifier, garbage)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=300) | st.lists(st.text(max_size=60), max_size=5).map(".".join))
def test_any_string_is_refused_cleanly(garbage: str) -> None:
    verifier = TokenVerifier(Settings(auth_mode="jwt", auth_jwt_secret=SECRET))
    with pytest.raises(Unauthenticated, match=r"^invalid token$"):
        verifier.verify(garbage)


# -- the Authorization header -------------------------------------------------------------


def test_bearer_token_is_read_from_metadata() -> None:
    assert bearer_token([("authorization", "Bearer abc.def.ghi")]) == "abc.def.ghi"
    assert bearer_token((("x-other", "1"), ("authorization", "bearer tok"))) == "tok"


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        [],
        [("x-other", "Bearer tok")],
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "Bearer ")],
        [("authorization", "Bearer")],
        [("authorization", "tok")],
        [("authorization", b"Bearer tok")],
    ],
)
def test_missing_or_other_schemes_say_missing_bearer_token(metadata: object) -> None:
    with pytest.raises(Unauthenticated, match=r"^missing bearer token$"):
        bearer_token(metadata)


# -- settings -----------------------------------------------------------------------------


def test_auth_mode_defaults_to_none() -> None:
    assert Settings.from_env({}).auth_mode == "none"


@pytest.mark.parametrize("mode", ["JWT", "oauth", "off"])
def test_unknown_auth_mode_is_refused(mode: str) -> None:
    with pytest.raises(ConfigError, match="AUTH_MODE"):
        Settings.from_env({"AUTH_MODE": mode})


def test_jwt_mode_needs_a_key() -> None:
    with pytest.raises(ConfigError, match=r"AUTH_JWT_SECRET.*AUTH_JWT_PUBLIC_KEY"):
        Settings.from_env(JWT)


def test_jwt_mode_refuses_both_keys(public_pem_path: Path) -> None:
    env = {**JWT, "AUTH_JWT_SECRET": SECRET}
    with pytest.raises(ConfigError, match="exactly one"):
        Settings.from_env({**env, "AUTH_JWT_PUBLIC_KEY": str(public_pem_path)})


def test_missing_public_key_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="AUTH_JWT_PUBLIC_KEY") as caught:
        Settings.from_env({**JWT, "AUTH_JWT_PUBLIC_KEY": str(missing)})
    assert str(missing) in str(caught.value)


def test_settings_never_show_secrets() -> None:
    settings = Settings.from_env(
        {
            **JWT,
            "AUTH_JWT_SECRET": SECRET,
            "NATS_PASSWORD": "nats-pw-1234",
            "NATS_TOKEN": "nats-token-5678",
            "NATS_USER": "svc",
        }
    )
    shown = repr(settings)
    for secret in (SECRET, JWT["PAGE_TOKEN_SECRET"], "nats-pw-1234", "nats-token-5678"):
        assert secret not in shown


@pytest.mark.parametrize("addr", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "host:1"])
def test_none_mode_refuses_a_non_loopback_address(addr: str) -> None:
    with pytest.raises(ConfigError, match=r"AUTH_MODE=none.*JOBS_GRPC_ADDR"):
        check_auth_mode(Settings.from_env({"JOBS_GRPC_ADDR": addr}))


@pytest.mark.parametrize("addr", ["127.0.0.1:50051", "localhost:1", "[::1]:2", "127.0.0.9:3"])
def test_none_mode_accepts_loopback_and_jwt_accepts_any(addr: str) -> None:
    check_auth_mode(Settings.from_env({"JOBS_GRPC_ADDR": addr}))
    env = {**JWT, "AUTH_JWT_SECRET": SECRET, "JOBS_GRPC_ADDR": "0.0.0.0:50051"}
    check_auth_mode(Settings.from_env(env))


# -- token lifetime -----------------------------------------------------------------------

DAY = 86400


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(good(exp=NOW + 2 * DAY), id="exp-two-days-ahead"),
        pytest.param(good(exp=NOW + 10 * 365 * DAY), id="exp-ten-years-ahead"),
        pytest.param(good(iat=NOW - DAY, exp=NOW + 3600), id="exp-minus-iat-over-a-day"),
        pytest.param(good(exp=str(NOW + 3600)), id="numeric-string-exp"),
        pytest.param(good(iat=str(NOW)), id="numeric-string-iat"),
    ],
)
def test_tokens_living_longer_than_the_max_lifetime_are_refused(
    hs_verifier: TokenVerifier,
    rs_verifier: TokenVerifier,
    rsa_keys: tuple[bytes, bytes],
    payload: dict[str, object],
) -> None:
    rejected(hs_verifier, t.hs256(SECRET, payload))
    rejected(rs_verifier, t.rs256(rsa_keys[0], payload))


def test_the_max_lifetime_is_a_setting() -> None:
    env = {**JWT, "AUTH_JWT_SECRET": SECRET, "AUTH_JWT_MAX_LIFETIME_S": "600"}
    verifier = TokenVerifier(Settings.from_env(env))
    now = int(time.time())
    assert verifier.verify(t.hs256(SECRET, t.claims("ann", ttl_s=540))).user_id == "ann"
    rejected(verifier, t.hs256(SECRET, t.claims("ann", ttl_s=3600)))  # fine by the default
    rejected(verifier, t.hs256(SECRET, {"sub": "ann", "iat": now - 700, "exp": now + 60}))
    default = TokenVerifier(Settings.from_env({**JWT, "AUTH_JWT_SECRET": SECRET}))
    day = t.hs256(SECRET, t.claims("ann", ttl_s=DAY - 60))  # just under a day
    assert default.verify(day).user_id == "ann"
    assert default.verify(t.hs256(SECRET, t.claims("ann", ttl_s=3600))).user_id == "ann"
