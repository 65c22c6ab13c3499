"""Settings come from the environment once, typed, with errors that name the variable."""

from __future__ import annotations

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
