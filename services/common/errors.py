"""The domain's exception hierarchy. Raised by domain code, mapped to gRPC status codes or
JetStream ack decisions at one boundary each (jobs ``api.py``, the workers' task loop).

An error the jobs API answers carries, besides its message for people, what a program
branches on: a :class:`Reason` (the ``ErrorInfo.reason`` of domain :data:`DOMAIN`) and string
``metadata``; a limit or a shutdown also ``retry_after`` when waiting lets a retry succeed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

DOMAIN = "prospect"


class Reason(StrEnum):
    """Why the jobs API refused a request: the one table of ``ErrorInfo.reason`` values
    (domain :data:`DOMAIN`), listed in the README's "Errors" section as well. A reason is
    never renamed or reused for something else; clients branch on it, not on the message."""

    INVALID_FIELD = "INVALID_FIELD"  # INVALID_ARGUMENT: a field breaks a rule (BadRequest)
    MALFORMED_REQUEST = "MALFORMED_REQUEST"  # INVALID_ARGUMENT: the body is not the message
    UNAUTHENTICATED = "UNAUTHENTICATED"  # UNAUTHENTICATED: no bearer token
    INVALID_TOKEN = "INVALID_TOKEN"  # UNAUTHENTICATED: a bearer token that is not valid
    PERMISSION_DENIED = "PERMISSION_DENIED"  # PERMISSION_DENIED: the caller may not do this
    JOB_NOT_FOUND = "JOB_NOT_FOUND"  # NOT_FOUND: no such job for this caller
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"  # ALREADY_EXISTS: key, other config
    JOB_NOT_CANCELLABLE = "JOB_NOT_CANCELLABLE"  # FAILED_PRECONDITION: final or failing job
    JOB_NOT_RETRYABLE = "JOB_NOT_RETRYABLE"  # FAILED_PRECONDITION: not FAILED or CANCELLED
    ACTIVE_JOB_LIMIT = "ACTIVE_JOB_LIMIT"  # RESOURCE_EXHAUSTED: MAX_ACTIVE_JOBS_PER_USER
    WATCH_LIMIT = "WATCH_LIMIT"  # RESOURCE_EXHAUSTED: MAX_WATCHES_PER_USER
    LIST_RATE_LIMIT = "LIST_RATE_LIMIT"  # RESOURCE_EXHAUSTED: LIST_ROWS_PER_USER_*
    PRINCIPAL_USER_LIMIT = "PRINCIPAL_USER_LIMIT"  # MAX_USERS_PER_PRINCIPAL_PER_MINUTE
    SCHEDULE_NOT_FOUND = "SCHEDULE_NOT_FOUND"  # NOT_FOUND: no such schedule for this caller
    SCHEDULE_LIMIT = "SCHEDULE_LIMIT"  # RESOURCE_EXHAUSTED: MAX_SCHEDULES_PER_USER
    UNSAFE_URL = "UNSAFE_URL"  # INVALID_ARGUMENT: a notify_url prospect will not call
    WEBHOOK_SECRET_REQUIRED = "WEBHOOK_SECRET_REQUIRED"  # FAILED_PRECONDITION: no secret yet
    ESTIMATE_OVER_LIMIT = "ESTIMATE_OVER_LIMIT"  # FAILED_PRECONDITION: p90 > max_estimated_cost
    UNAVAILABLE = "UNAVAILABLE"  # UNAVAILABLE: this replica is shutting down
    INTERNAL = "INTERNAL"  # INTERNAL: anything unexpected (logged, never detailed)


class ProspectError(Exception):
    """Base of every error prospect raises on purpose.

    ``reason`` defaults to the kind's own (a class attribute); ``metadata`` are facts a
    program may use (``{"job_id": ...}``), never secrets or other users' data."""

    reason: Reason = Reason.INTERNAL
    # More google.rpc.Status details (protobuf messages, each packed as an Any), e.g. the
    # CampaignEstimate that an ESTIMATE_OVER_LIMIT refusal rests on.
    details: tuple[object, ...] = ()

    def __init__(
        self,
        message: str = "",
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class ConfigError(ProspectError):
    """A setting is missing or malformed; the process refuses to start."""


class InvalidArgument(ProspectError):
    """A request field breaks a rule. The message names the field and the rule; ``field``
    is its path in the request (``config.max_results``), ``rule`` the rule broken.
    ``violations``: every (field, rule) of the request that is wrong, this one first (see
    :meth:`of`)."""

    reason = Reason.INVALID_FIELD

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}", metadata={"field": field})
        self.field = field
        self.rule = rule
        self.violations: tuple[tuple[str, str], ...] = ((field, rule),)

    @classmethod
    def of(cls, errors: list[InvalidArgument]) -> InvalidArgument:
        """One error for all of ``errors`` (at least one): its message lists each field and
        rule, its ``violations`` hold them all, its ``field`` is the first's."""
        first = cls(errors[0].field, errors[0].rule)
        first.violations = tuple(v for e in errors for v in e.violations)
        first.reason = errors[0].reason  # e.g. UNSAFE_URL, when that error is the first
        first.args = ("; ".join(f"{field}: {rule}" for field, rule in first.violations),)
        return first


class MalformedRequest(ProspectError):
    """The request body is not a valid message of the RPC's request type."""

    reason = Reason.MALFORMED_REQUEST


class Unauthenticated(ProspectError):
    """No valid credentials; the message is safe to send to the caller ("missing bearer
    token" or "invalid token", nothing about why a token was refused)."""

    reason = Reason.INVALID_TOKEN


class NotFound(ProspectError):
    """No such object for this caller (unknown and other users' objects alike)."""

    reason = Reason.JOB_NOT_FOUND


class PermissionDenied(ProspectError):
    """The caller is known but may not do this."""

    reason = Reason.PERMISSION_DENIED


class FailedPrecondition(ProspectError):
    """The object is in a state that does not allow the request; the raiser names the
    ``reason``."""

    def __init__(
        self, message: str, *, reason: Reason, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)


class ResourceExhausted(ProspectError):
    """A per-user (or per-caller) limit is reached: ``reason`` names which, ``subject`` whose
    it is (``user:<id>``, ``principal:<id>``), ``quota`` the limit and its setting;
    ``retry_after`` (seconds) only when time alone frees the limit."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        subject: str,
        quota: str,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.subject = subject
        self.quota = quota
        self.retry_after = retry_after


class AlreadyExists(ProspectError):
    """What the request would create exists already, made by a request that differs from
    this one (an idempotency key reused with another config): the caller needs a new key,
    not a retry."""

    reason = Reason.IDEMPOTENCY_KEY_REUSED


class Unavailable(ProspectError):
    """This process cannot serve the request any more (it is shutting down); the same
    request to another replica, or later, succeeds. The message says how to resume;
    ``retry_after`` (seconds) is when to."""

    reason = Reason.UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after = retry_after


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
