"""Settings come from the environment once, typed, with errors that name the variable."""

from __future__ import annotations

from dataclasses import fields

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
