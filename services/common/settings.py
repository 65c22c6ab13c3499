"""Typed settings for every prospect process, read once from the environment.

Each service builds one frozen :class:`Settings` in its ``main()`` with
:meth:`Settings.from_env` and passes it down; nothing else reads ``os.environ``. Tests pass
an explicit mapping instead of mutating the process environment.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from services.common import email_steps, safe_urls
from services.common.addresses import is_loopback
from services.common.errors import ConfigError

DEFAULT_DATA_DIR = "data"
# Signs page tokens in AUTH_MODE=none (the one local user) when PAGE_TOKEN_SECRET is unset;
# AUTH_MODE=jwt refuses to start without a PAGE_TOKEN_SECRET of its own.
LOCAL_PAGE_TOKEN_SECRET = "prospect-page-tokens"
# Least bytes of AUTH_JWT_SECRET (HS256: RFC 7518 3.2 asks a key the size of the hash) and
# of PAGE_TOKEN_SECRET in AUTH_MODE=jwt.
MIN_SECRET_BYTES = 32


def _default_database_url(data_dir: str) -> str:
    return f"sqlite+aiosqlite:///{Path(data_dir) / 'prospect.db'}"


# Numeric settings and the rule each must keep: (field names, check, rule as worded in errors).
_BOUNDS: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (
        (
            "discovery_concurrency", "details_concurrency", "enrichment_concurrency",
            "job_max_attempts", "max_deliver", "sandbox_max_places", "provider_max_attempts",
            "rate_limit_google_places_burst", "rate_limit_hunter_burst",
            "rate_limit_neverbounce_burst", "max_active_jobs_per_user", "max_watches_per_user",
            "report_partitions", "web_max_body_bytes", "max_schedules_per_user",
            "website_max_bytes",
        ),
        lambda v: v >= 1,
        "be at least 1",
    ),
    (
        (
            "ack_wait_s", "outbox_poll_s", "shutdown_grace_s", "stall_timeout_s", "stop_timeout_s",
            "rate_limit_google_places_rps", "rate_limit_hunter_rps", "rate_limit_neverbounce_rps",
            "provider_timeout_s", "retention_days", "schedule_min_interval_s",
            "scheduler_poll_s", "website_fetch_timeout_s",
        ),
        lambda v: v > 0,
        "be positive",
    ),
    (
        ("enrichment_cache_days", "sandbox_latency_ms", "website_max_redirects"),
        lambda v: v >= 0,
        "not be negative",
    ),
    (
        ("max_users_per_principal_per_minute", "list_rows_per_user_burst"),
        lambda v: v >= 1,
        "be at least 1",
    ),
    (("list_rows_per_user_per_s", "auth_jwt_max_lifetime_s"), lambda v: v > 0, "be positive"),
    (
        ("webhook_timeout_s", "webhook_retry_base_s", "webhook_retry_max_s", "webhook_max_age_s"),
        lambda v: v > 0,
        "be positive",
    ),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every service, with its environment variable and default.

    The README's settings table is this class: keep the two in step.
    """

    # Wiring
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = ""  # empty: SQLite file under data_dir
    jobs_grpc_addr: str = "127.0.0.1:50051"
    health_grpc_addr: str = ""  # workers: grpc.health.v1 here (e.g. 0.0.0.0:8081); empty: off
    metrics_addr: str = ""  # Prometheus /metrics here (e.g. 0.0.0.0:9464); empty: off
    data_dir: str = DEFAULT_DATA_DIR
    log_level: str = "INFO"
    # "text" (for people), "json" (one object a line), or "auto": text on a terminal, json
    # in a container (Kubernetes, Docker, Podman), else text. See services/common/logs.py.
    log_format: str = "auto"
    shutdown_grace_s: float = 25.0  # under Kubernetes' default 30 s termination grace
    # JetStream
    stream_replicas: int = 1
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    # Jobs service
    job_max_attempts: int = 3
    # Signs page tokens; set one per deployment (AUTH_MODE=jwt: required, 32 bytes or more;
    # AUTH_MODE=none falls back to a built-in key, see effective_page_token_secret).
    page_token_secret: str = field(default="", repr=False)
    local_user: str = "local"  # the one user of AUTH_MODE=none
    # Authentication: "none" (one local user, loopback only) or "jwt".
    auth_mode: str = "none"
    auth_jwt_secret: str = field(default="", repr=False)  # HS256
    auth_jwt_public_key: str = ""  # path to a PEM public key: RS256 (RSA) or ES256 (P-256)
    # The identity provider's JWKS endpoint (RS256/ES256 keys by kid, cached, refreshed);
    # https, or http to a loopback host for development.
    auth_jwks_url: str = ""
    auth_jwt_issuer: str = ""  # checked when set
    auth_jwt_audience: str = ""  # checked when set
    # A token whose exp is further ahead than this (or exp - iat longer) is refused.
    auth_jwt_max_lifetime_s: float = 86400.0
    max_active_jobs_per_user: int = 20
    max_watches_per_user: int = 10  # open WatchJob streams, per jobs replica
    # Schedules (services/jobs/schedules.py): at most this many per user, none firing more
    # often than every SCHEDULE_MIN_INTERVAL_S (cron or interval), and how often each jobs
    # replica looks for schedules due.
    max_schedules_per_user: int = 20
    schedule_min_interval_s: float = 60.0
    scheduler_poll_s: float = 1.0
    # Per jobs replica, in memory (N replicas admit up to N times as much):
    # distinct users a service token submits for within any 60 s,
    max_users_per_principal_per_minute: int = 1000
    # and rows ListJobs/ListLeads list per user: a token bucket of this rate and burst.
    list_rows_per_user_per_s: float = 2000.0
    list_rows_per_user_burst: int = 5000
    grpc_tls_cert: str = ""  # PEM paths: the jobs API serves TLS when both are set
    grpc_tls_key: str = ""
    # Completion webhooks (services/jobs/webhooks.py). Hosts (names or addresses,
    # comma-separated) a notify_url may reach over http or at a private address: for
    # development and tests only. Each request's deadline (connecting: at most 5 s of it);
    # retries from RETRY_BASE_S doubling to at most RETRY_MAX_S apart, until an attempt
    # fails MAX_AGE_S after the job ended.
    webhook_allowed_hosts: str = ""
    webhook_timeout_s: float = 10.0
    webhook_retry_base_s: float = 5.0
    webhook_retry_max_s: float = 3600.0
    webhook_max_age_s: float = 86400.0
    # Web (``python -m services.web``): the HTTP API and page, a client of the jobs API.
    web_addr: str = "127.0.0.1:8080"
    web_allowed_origins: str = ""  # comma-separated exact origins for CORS; empty: none
    web_max_body_bytes: int = 65536  # a larger request body is refused (413) unread
    web_jobs_tls_ca: str = ""  # PEM path: the web process calls the jobs API over TLS
    # NATS credentials, for every service (never logged).
    nats_user: str = ""
    nats_password: str = field(default="", repr=False)
    nats_token: str = field(default="", repr=False)
    nats_creds: str = ""  # path to a .creds file
    # TLS to nats-server: the CA that signed its certificate (TLS is on when set), and this
    # client's own certificate and key for mutual TLS (optional).
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    outbox_poll_s: float = 1.0
    # An unfinished job with no change for this long is retried (or failed, out of attempts).
    stall_timeout_s: float = 600.0
    # A cancelled or failing job waits at most this long for its work under way to report
    # (CANCELLING, FAILING) before it is final; more than ACK_WAIT_S plus a provider call.
    stop_timeout_s: float = 60.0
    # Partitions of the events stream, each applied by one jobs replica at a time: at most
    # this many replicas share the reports, and each runs a pull loop per partition it
    # owns. 1: one replica applies every report, the others stand by (see docs/design.md,
    # "The report path").
    report_partitions: int = 1
    retention_days: float = 90.0  # finished jobs older than this are deleted by retention
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
    # Real providers: a capability whose key is set is served by the real API.
    # repr=False: settings may be logged, keys never are.
    google_places_api_key: str = field(default="", repr=False)
    hunter_api_key: str = field(default="", repr=False)
    neverbounce_api_key: str = field(default="", repr=False)
    google_places_base_url: str = "https://places.googleapis.com"
    hunter_base_url: str = "https://api.hunter.io"
    neverbounce_base_url: str = "https://api.neverbounce.com"
    provider_timeout_s: float = 15.0
    provider_max_attempts: int = 4  # tries of one call on transient answers, then the task retries
    # Shared rate limits (all worker processes together): requests per second and burst.
    # Google: 600 requests/min per method per project by default. Hunter: 15/s and 500/min,
    # so 8/s sustained with a burst of 15 keeps both. NeverBounce publishes none.
    rate_limit_google_places_rps: float = 10.0
    rate_limit_google_places_burst: int = 10
    rate_limit_hunter_rps: float = 8.0
    rate_limit_hunter_burst: int = 15
    rate_limit_neverbounce_rps: float = 10.0
    rate_limit_neverbounce_burst: int = 10
    # Prices in USD per billable call (list prices read 2026-11-23; see README, Providers).
    price_google_text_search: float = 0.035  # Text Search Enterprise, per request (page)
    price_google_place_details: float = 0.020  # Place Details Enterprise, per request
    price_hunter_domain_search: float = 0.0245  # one credit at $49 / 2,000 credits
    price_neverbounce_check: float = 0.008  # one credit, 1k-5k tier
    # Enrichment cache: a domain or email looked up within this many days is not paid again.
    enrichment_cache_days: float = 30.0
    # Email waterfall (services/enrichment/waterfall.py; README "Email waterfall"): the
    # finders in the order tried, stopping at the first verified address: "website" (the
    # business's own pages, free), "pattern" (ROLE_ADDRESSES at the domain, if it has MX,
    # each verified at the verifier's price), "hunter" (the paid email finder). "hunter"
    # alone is the behaviour before the waterfall.
    email_waterfall: str = "website,pattern,hunter"
    role_addresses: str = "info,contact,hello"  # local parts, comma-separated, at most 5
    website_fetch_timeout_s: float = 5.0  # each page (robots.txt, home, contact), all in
    website_max_bytes: int = 524288  # a longer page is read up to here
    website_max_redirects: int = 3
    # Hosts (names, addresses, or ".suffix" for a domain and its subdomains) a website may
    # be fetched from at a loopback or private address: for development and tests only.
    website_allowed_hosts: str = ""
    # The pattern step's MX check: "dns" (a DNS query to MX_NAMESERVER, host:port, or the
    # first nameserver of /etc/resolv.conf) or "none" (every domain is taken to accept mail).
    mx_resolver: str = "dns"
    mx_nameserver: str = ""

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, verifies_tokens: bool = True
    ) -> Settings:
        """Build settings from ``environ`` (default: the process environment).

        Each field reads the upper-cased field name; a value that does not parse, or breaks
        a rule of :meth:`validate`, is a :class:`ConfigError` naming the variable.
        ``verifies_tokens=False`` is for a process that passes bearer tokens on without
        checking them (the web process): AUTH_MODE=jwt then needs no key of its own.
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
        settings.validate(verifies_tokens=verifies_tokens)
        return settings

    def validate(self, *, verifies_tokens: bool = True) -> None:
        """Raise :class:`ConfigError` naming the first variable that breaks its rule: every
        float finite (``float()`` takes ``nan``, ``inf`` and ``1e999``, which would poison
        prices and timeouts alike), numbers within their bounds, prices and sandbox costs
        not negative, and the auth, TLS and address settings consistent."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name.upper()} must be a finite number")
        if self.stream_replicas not in (1, 3, 5):
            raise ConfigError("STREAM_REPLICAS must be 1, 3 or 5")
        for names, ok, rule in _BOUNDS:
            for name in names:
                if not ok(getattr(self, name)):
                    raise ConfigError(f"{name.upper()} must {rule}")
        for f in fields(self):
            if f.name.startswith(("price_", "sandbox_cost_")) and getattr(self, f.name) < 0:
                raise ConfigError(f"{f.name.upper()} must not be negative")
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError(f"LOG_FORMAT={self.log_format!r} must be auto, json or text")
        if self.auth_mode not in ("none", "jwt"):
            raise ConfigError(f"AUTH_MODE={self.auth_mode!r} must be none or jwt")
        if self.auth_mode == "jwt" and verifies_tokens:
            keys = (self.auth_jwt_secret, self.auth_jwt_public_key, self.auth_jwks_url)
            if sum(map(bool, keys)) != 1:
                raise ConfigError(
                    "AUTH_MODE=jwt needs exactly one of AUTH_JWT_SECRET (HS256), "
                    "AUTH_JWT_PUBLIC_KEY (RS256/ES256) or AUTH_JWKS_URL (RS256/ES256)"
                )
            if self.auth_jwks_url:
                _check_jwks_url(self.auth_jwks_url)
            if self.auth_jwt_public_key and not Path(self.auth_jwt_public_key).is_file():
                raise ConfigError(f"AUTH_JWT_PUBLIC_KEY={self.auth_jwt_public_key}: no such file")
            if self.auth_jwt_secret and len(self.auth_jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (HS256); "
                    "e.g. openssl rand -hex 32"
                )
            if len(self.page_token_secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"PAGE_TOKEN_SECRET must be set, at least {MIN_SECRET_BYTES} bytes, with "
                    "AUTH_MODE=jwt; e.g. openssl rand -hex 32"
                )
        if bool(self.grpc_tls_cert) != bool(self.grpc_tls_key):
            raise ConfigError("GRPC_TLS_CERT and GRPC_TLS_KEY go together")
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together")
        if self.nats_tls_cert and not self.nats_tls_ca:
            raise ConfigError(
                "NATS_TLS_CERT needs NATS_TLS_CA (the CA of the server's certificate)"
            )
        for name in (
            "grpc_tls_cert",
            "grpc_tls_key",
            "nats_creds",
            "nats_tls_ca",
            "nats_tls_cert",
            "nats_tls_key",
            "web_jobs_tls_ca",
        ):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name.upper()}={path}: no such file")
        host, sep, port = self.jobs_grpc_addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"JOBS_GRPC_ADDR={self.jobs_grpc_addr!r} must be host:port")
        host, sep, port = self.web_addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"WEB_ADDR={self.web_addr!r} must be host:port")
        if self.metrics_addr:
            host, sep, port = self.metrics_addr.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ConfigError(f"METRICS_ADDR={self.metrics_addr!r} must be host:port")
        for origin in self.web_origins:
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise ConfigError(
                    f"WEB_ALLOWED_ORIGINS: {origin!r} is not an origin (scheme://host[:port])"
                )
        email_steps.check(self)

    @classmethod
    def load_or_exit(cls, *, verifies_tokens: bool = True) -> Settings:
        """Settings for a service's ``main()``: a bad setting ends the process with a one-line
        message naming it (exit code 2), not a traceback."""
        try:
            return cls.from_env(verifies_tokens=verifies_tokens)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    @property
    def effective_database_url(self) -> str:
        """DATABASE_URL, or a SQLite file under DATA_DIR when it is unset."""
        return self.database_url or _default_database_url(self.data_dir)

    @property
    def web_origins(self) -> frozenset[str]:
        """WEB_ALLOWED_ORIGINS as a set of exact origins (``https://app.example.com``)."""
        return frozenset(o.strip() for o in self.web_allowed_origins.split(",") if o.strip())

    @property
    def waterfall_steps(self) -> tuple[str, ...]:
        """EMAIL_WATERFALL as its steps, in order."""
        return email_steps.items(self.email_waterfall)

    @property
    def role_locals(self) -> tuple[str, ...]:
        """ROLE_ADDRESSES as local parts, in order."""
        return email_steps.items(self.role_addresses)

    @property
    def website_hosts(self) -> frozenset[str]:
        """WEBSITE_ALLOWED_HOSTS as a set of lower-case hosts and ".suffix" entries."""
        return safe_urls.allowed_hosts(self.website_allowed_hosts)

    @property
    def webhook_hosts(self) -> frozenset[str]:
        """WEBHOOK_ALLOWED_HOSTS as a set of lower-case hosts."""
        return safe_urls.allowed_hosts(self.webhook_allowed_hosts)

    @property
    def effective_page_token_secret(self) -> str:
        """PAGE_TOKEN_SECRET, or a built-in key when it is unset (AUTH_MODE=none only:
        :meth:`validate` refuses AUTH_MODE=jwt without one)."""
        return self.page_token_secret or LOCAL_PAGE_TOKEN_SECRET


def _check_jwks_url(url: str) -> None:
    """https, or http to a loopback host (a key set fetched in the clear could be swapped)."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http") or parts.username:
        raise ConfigError(f"AUTH_JWKS_URL={url!r} must be an https:// URL")
    if parts.scheme == "http" and not is_loopback(f"{parts.hostname}:0"):
        raise ConfigError(f"AUTH_JWKS_URL={url!r}: http only to a loopback host; use https")
