"""Settings come from the environment once, typed, with errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.settings import Settings


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.jobs_grpc_addr == "127.0.0.1:50051"
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.effective_database_url == "sqlite+aiosqlite:///data/prospect.db"


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {"SANDBOX_LATENCY_MS": "0", "MAX_DELIVER": "7", "DATABASE_URL": "postgresql://db/x"}
    )
    assert settings.sandbox_latency_ms == 0.0
    assert settings.max_deliver == 7
    assert settings.effective_database_url == "postgresql://db/x"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_DELIVER": "many"}, "MAX_DELIVER"),
        ({"STREAM_REPLICAS": "2"}, "STREAM_REPLICAS"),
        ({"JOBS_GRPC_ADDR": "localhost"}, "JOBS_GRPC_ADDR"),
        ({"SANDBOX_LATENCY_MS": "-1"}, "SANDBOX_LATENCY_MS"),
        ({"ENRICHMENT_CONCURRENCY": "0"}, "ENRICHMENT_CONCURRENCY"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


FLOAT_SETTINGS = [f.name.upper() for f in fields(Settings) if isinstance(f.default, float)]
MONEY_SETTINGS = [name for name in FLOAT_SETTINGS if name.startswith(("PRICE_", "SANDBOX_COST_"))]
# Spellings float() turns into NaN or an infinity; 1e999 overflows to inf.
NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"]


def test_the_money_settings_are_among_the_floats() -> None:
    assert "PRICE_HUNTER_DOMAIN_SEARCH" in MONEY_SETTINGS
    assert "SANDBOX_COST_VERIFY" in MONEY_SETTINGS
    assert len(MONEY_SETTINGS) == 8
    assert {"ACK_WAIT_S", "SANDBOX_LATENCY_MS", "RETENTION_DAYS"} <= set(FLOAT_SETTINGS)


@pytest.mark.parametrize("raw", NON_FINITE)
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_non_finite_floats_are_refused(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must be a finite number$"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("name", MONEY_SETTINGS)
def test_prices_and_sandbox_costs_must_not_be_negative(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must not be negative$"):
        Settings.from_env({name: "-0.01"})


@pytest.mark.parametrize("name", MONEY_SETTINGS)
def test_finite_prices_and_sandbox_costs_are_kept(name: str) -> None:
    assert getattr(Settings.from_env({name: "0"}), name.lower()) == 0.0
    assert getattr(Settings.from_env({name: "0.0125"}), name.lower()) == 0.0125


# -- AUTH_MODE=jwt secrets and the API's limits -------------------------------------------

LONG = "k" * 32  # 32 bytes: the least either secret may be


def test_jwt_mode_needs_its_own_page_token_secret() -> None:
    with pytest.raises(ConfigError, match=r"^PAGE_TOKEN_SECRET must be set, at least 32 bytes"):
        Settings.from_env({"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": LONG})


def test_none_mode_falls_back_to_a_built_in_page_token_secret() -> None:
    assert Settings.from_env({}).page_token_secret == ""
    assert Settings.from_env({}).effective_page_token_secret == "prospect-page-tokens"
    chosen = Settings.from_env({"PAGE_TOKEN_SECRET": "mine"})
    assert chosen.effective_page_token_secret == "mine"
    env = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": LONG, "PAGE_TOKEN_SECRET": LONG + "p"}
    assert Settings.from_env(env).effective_page_token_secret == LONG + "p"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AUTH_JWT_SECRET": LONG[:31], "PAGE_TOKEN_SECRET": LONG}, "AUTH_JWT_SECRET"),
        ({"AUTH_JWT_SECRET": "é" * 15 + "k", "PAGE_TOKEN_SECRET": LONG}, "AUTH_JWT_SECRET"),
        ({"AUTH_JWT_SECRET": LONG, "PAGE_TOKEN_SECRET": LONG[:31]}, "PAGE_TOKEN_SECRET"),
    ],
)
def test_jwt_mode_refuses_secrets_under_32_bytes(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{named} must .*at least 32 bytes"):
        Settings.from_env({"AUTH_MODE": "jwt", **env})
    env = {k: v + "k" if k == named else v for k, v in env.items()}  # one byte more: 32
    assert Settings.from_env({"AUTH_MODE": "jwt", **env}).auth_mode == "jwt"


def test_rs256_mode_needs_a_page_token_secret_too(tmp_path: Path) -> None:
    pem = tmp_path / "public.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="PAGE_TOKEN_SECRET"):
        Settings.from_env({"AUTH_MODE": "jwt", "AUTH_JWT_PUBLIC_KEY": str(pem)})
    env = {"AUTH_MODE": "jwt", "AUTH_JWT_PUBLIC_KEY": str(pem), "PAGE_TOKEN_SECRET": LONG}
    assert Settings.from_env(env).auth_jwt_public_key == str(pem)


def test_a_process_without_page_token_secret_in_jwt_mode_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "PAGE_TOKEN"))}
    env |= {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": LONG}
    code = "from services.common.settings import Settings; Settings.load_or_exit()"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("configuration error: PAGE_TOKEN_SECRET must be set")


def test_the_api_limit_settings_default_and_must_be_positive() -> None:
    settings = Settings.from_env({})
    assert settings.auth_jwt_max_lifetime_s == 86400.0
    assert settings.max_users_per_principal_per_minute == 1000
    assert settings.list_rows_per_user_per_s == 2000.0
    assert settings.list_rows_per_user_burst == 5000
    for name, rule in (
        ("AUTH_JWT_MAX_LIFETIME_S", "be positive"),
        ("LIST_ROWS_PER_USER_PER_S", "be positive"),
        ("MAX_USERS_PER_PRINCIPAL_PER_MINUTE", "be at least 1"),
        ("LIST_ROWS_PER_USER_BURST", "be at least 1"),
    ):
        with pytest.raises(ConfigError, match=rf"^{name} must {rule}$"):
            Settings.from_env({name: "0"})


def test_a_process_that_passes_tokens_on_needs_no_key_of_its_own() -> None:
    """The web process (verifies_tokens=False) runs AUTH_MODE=jwt without a key or a
    page-token secret: the jobs API it passes the tokens to checks them."""
    with pytest.raises(ConfigError, match="exactly one of"):
        Settings.from_env({"AUTH_MODE": "jwt"})
    settings = Settings.from_env({"AUTH_MODE": "jwt"}, verifies_tokens=False)
    assert settings.auth_mode == "jwt" and not settings.auth_jwt_secret
