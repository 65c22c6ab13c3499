"""The domain's exception hierarchy. Raised by domain code, mapped to gRPC status codes or
JetStream ack decisions at one boundary each (jobs ``api.py``, the workers' task loop)."""

from __future__ import annotations


class ProspectError(Exception):
    """Base of every error prospect raises on purpose."""


class ConfigError(ProspectError):
    """A setting is missing or malformed; the process refuses to start."""


class InvalidArgument(ProspectError):
    """A request field breaks a rule. The message names the field and the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(ProspectError):
    """No such object for this caller (unknown and other users' objects alike)."""


class PermissionDenied(ProspectError):
    """The caller is known but may not do this."""


class FailedPrecondition(ProspectError):
    """The object is in a state that does not allow the request."""


class ResourceExhausted(ProspectError):
    """A per-user limit is reached."""


class AlreadyExists(ProspectError):
    """What the request would create exists already, made by a request that differs from
    this one (an idempotency key reused with another config): the caller needs a new key,
    not a retry."""


class Unavailable(ProspectError):
    """This process cannot serve the request any more (it is shutting down); the same
    request to another replica, or later, succeeds. The message says how to resume."""


class ProviderError(ProspectError):
    """A provider call failed. ``retryable`` decides nak-with-delay versus fail fast."""

    retryable: bool = False

    def __init__(self, provider: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.detail = message
        self.retry_after = retry_after


class TransientProviderError(ProviderError):
    """Timeouts, 429, 5xx: worth another try after a delay."""

    retryable = True


class PermanentProviderError(ProviderError):
    """Bad credentials, bad request, credits exhausted: retrying cannot help."""

    retryable = False
