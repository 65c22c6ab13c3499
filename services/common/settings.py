"""Typed settings for every prospect process, read once from the environment.

Each service builds one frozen :class:`Settings` in its ``main()`` with
:meth:`Settings.from_env` and passes it down; nothing else reads ``os.environ``. Tests pass
an explicit mapping instead of mutating the process environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from services.common.errors import ConfigError

DEFAULT_DATA_DIR = "data"


def _default_database_url(data_dir: str) -> str:
    return f"sqlite+aiosqlite:///{Path(data_dir) / 'prospect.db'}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every service, with its environment variable and default.

    The README's settings table is this class: keep the two in step.
    """

    # Wiring
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = ""  # empty: SQLite file under data_dir
    jobs_grpc_addr: str = "127.0.0.1:50051"
    data_dir: str = DEFAULT_DATA_DIR
    log_level: str = "INFO"
    shutdown_grace_s: float = 25.0  # under Kubernetes' default 30 s termination grace
    # JetStream
    stream_replicas: int = 1
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    # Jobs service
    job_max_attempts: int = 3
    page_token_secret: str = "prospect-page-tokens"  # signs page tokens; set per deployment
    local_user: str = "local"  # the one user of AUTH_MODE=none
    outbox_poll_s: float = 1.0
    # Workers
    discovery_concurrency: int = 4  # discovery tasks in flight per worker
    details_concurrency: int = 8  # place-details calls in flight per task
    enrichment_concurrency: int = 16  # enrichment tasks in flight per worker
    # Sandbox providers (used for any capability whose API key is not set)
    sandbox_latency_ms: float = 100.0
    sandbox_max_places: int = 20
    sandbox_cost_text_search: float = 0.032
    sandbox_cost_place_details: float = 0.017
    sandbox_cost_email_search: float = 0.034
    sandbox_cost_verify: float = 0.008

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment).

        Each field reads the upper-cased field name; a value that does not parse is a
        :class:`ConfigError` naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                if kind is int:
                    values[f.name] = int(raw)
                elif kind is float:
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.stream_replicas not in (1, 3, 5):
            raise ConfigError("STREAM_REPLICAS must be 1, 3 or 5")
        for name in (
            "discovery_concurrency",
            "details_concurrency",
            "enrichment_concurrency",
            "job_max_attempts",
            "max_deliver",
            "sandbox_max_places",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be at least 1")
        for name in ("ack_wait_s", "outbox_poll_s", "shutdown_grace_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive")
        if self.sandbox_latency_ms < 0:
            raise ConfigError("SANDBOX_LATENCY_MS must not be negative")
        host, sep, port = self.jobs_grpc_addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"JOBS_GRPC_ADDR={self.jobs_grpc_addr!r} must be host:port")

    @classmethod
    def load_or_exit(cls) -> Settings:
        """Settings for a service's ``main()``: a bad setting ends the process with a one-line
        message naming it (exit code 2), not a traceback."""
        try:
            return cls.from_env()
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    @property
    def effective_database_url(self) -> str:
        """DATABASE_URL, or a SQLite file under DATA_DIR when it is unset."""
        return self.database_url or _default_database_url(self.data_dir)
