"""Request validation: every rule names its field. Raises InvalidArgument."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Collection
from typing import TypeVar

from prospect.v1 import jobs_pb2
from services.common import safe_urls
from services.common.errors import InvalidArgument, Reason
from services.common.money import micros_to_usd, usd_to_micros

# Ids are matched whole: \A and \Z, since ``$`` also matches before a trailing newline (so
# even a caller's ``.match`` takes no "job_...\n"); prefer :func:`is_job_id`/:func:`is_lead_id`.
JOB_ID = re.compile(r"\Ajob_[0-9a-f]{32}\Z")
LEAD_ID = re.compile(r"\Alead_[0-9a-f]{32}\Z")  # as services.jobs.tasks.new_id makes them
TEXT_MAX = 200
MAX_RESULTS = 100
BUDGET_MAX = 10_000.0
BUDGET_MAX_MICROS = usd_to_micros(BUDGET_MAX)
PAGE_SIZE_MAX = 500
PAGE_SIZE_DEFAULT = 50
IDEMPOTENCY_KEY_MAX = 200
T = TypeVar("T")


def is_job_id(value: object) -> bool:
    """Whether ``value`` is a job id, whole (``job_`` and 32 lowercase hex digits)."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def is_lead_id(value: object) -> bool:
    """Whether ``value`` is a lead id, whole (``lead_`` and 32 lowercase hex digits)."""
    return isinstance(value, str) and LEAD_ID.fullmatch(value) is not None


def _text(field: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > TEXT_MAX:
        raise InvalidArgument(field, f"must be at most {TEXT_MAX} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def _max_results(value: int) -> int:
    if not 1 <= value <= MAX_RESULTS:
        raise InvalidArgument("config.max_results", f"must be between 1 and {MAX_RESULTS}")
    return value


def _min_score(value: int) -> int:
    if not 0 <= value <= 100:
        raise InvalidArgument("config.min_confidence_score", "must be between 0 and 100")
    return value


def _target_verified(config: jobs_pb2.CampaignConfig) -> int:
    """The goal of verified emails (0 = none): at most the leads kept, and only with
    verification (unverified emails never count toward it)."""
    field, value = "config.target_verified_emails", config.target_verified_emails
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    if value > max(config.max_results, 0):
        raise InvalidArgument(field, "must be at most config.max_results")
    if value and not config.verify_emails:
        raise InvalidArgument(field, "needs config.verify_emails: only verified emails count")
    return value


def validate_notify_url(
    url: str, field: str = "config.notify_url", allowed_hosts: Collection[str] = frozenset()
) -> str:
    """``url`` as given, "" for none, or InvalidArgument with reason UNSAFE_URL naming
    ``field`` and the rule broken (:func:`services.common.safe_urls.check_url`: https, no
    credentials, at most 2048 characters, no literal private address; ``allowed_hosts``
    are WEBHOOK_ALLOWED_HOSTS). Host names are checked again at each delivery."""
    if not url:
        return ""
    try:
        safe_urls.check_url(url, allowed_hosts)
    except safe_urls.UnsafeUrl as exc:
        error = InvalidArgument(field, str(exc))
        error.reason = Reason.UNSAFE_URL
        raise error from None
    return url


def validate_config(
    config: jobs_pb2.CampaignConfig, *, allowed_hosts: Collection[str] = frozenset()
) -> jobs_pb2.CampaignConfig:
    """A cleaned copy of ``config`` (text trimmed), or InvalidArgument naming every field
    that breaks a rule (each field's first broken rule). ``allowed_hosts``: the hosts a
    ``notify_url`` may name over http or at a private address (WEBHOOK_ALLOWED_HOSTS)."""
    errors: list[InvalidArgument] = []

    def checked(check: Callable[[], T], default: T) -> T:
        try:
            return check()
        except InvalidArgument as exc:
            errors.append(exc)
            return default

    business_type = checked(lambda: _text("config.business_type", config.business_type), "")
    location = checked(lambda: _text("config.location", config.location), "")
    checked(lambda: _max_results(config.max_results), 0)
    checked(lambda: _min_score(config.min_confidence_score), 0)
    target = checked(lambda: _target_verified(config), 0)
    budget = checked(lambda: validate_budget(config), 0)
    notify_url = checked(
        lambda: validate_notify_url(config.notify_url, allowed_hosts=allowed_hosts), ""
    )
    if errors:
        raise InvalidArgument.of(errors)
    return jobs_pb2.CampaignConfig(
        business_type=business_type,
        location=location,
        max_results=config.max_results,
        min_confidence_score=config.min_confidence_score,
        budget_limit=micros_to_usd(budget),
        budget_limit_micros=budget,
        verify_emails=config.verify_emails,
        notify_url=notify_url,
        target_verified_emails=target,
    )


def validate_budget(config: jobs_pb2.CampaignConfig) -> int:
    """``config``'s budget in micro-dollars (0 = none), given in either form or both.

    Each form given (not 0) must be in range: 0 to BUDGET_MAX USD; both given must be the
    same amount (the double rounded to the nearest micro-dollar), else InvalidArgument
    naming ``config.budget_limit_micros``."""
    return validate_amount(config.budget_limit, config.budget_limit_micros, "config.budget_limit")


def validate_amount(usd: float, micros: int, field: str) -> int:
    """An amount given as USD (``field``) and as micro-dollars (``field`` + ``_micros``),
    either or both (the same amount): in micro-dollars, 0 = none. Each form must be within
    0 to BUDGET_MAX USD, else InvalidArgument naming the form that is not."""
    if not math.isfinite(usd) or not 0 <= usd <= BUDGET_MAX:
        raise InvalidArgument(field, f"must be a finite amount between 0 and {BUDGET_MAX:,.0f} USD")
    if not 0 <= micros <= BUDGET_MAX_MICROS:
        raise InvalidArgument(
            f"{field}_micros",
            f"must be between 0 and {BUDGET_MAX_MICROS:,} micro-dollars ({BUDGET_MAX:,.0f} USD)",
        )
    if micros and usd and usd_to_micros(usd) != micros:
        raise InvalidArgument(
            f"{field}_micros",
            f"is {micros:,} micro-dollars but {field} is {usd!r} USD "
            f"({usd_to_micros(usd):,} micro-dollars): give one of the two, or both the same",
        )
    return micros or usd_to_micros(usd)


def validate_submit(
    request: jobs_pb2.SubmitCampaignRequest, *, allowed_hosts: Collection[str] = frozenset()
) -> tuple[jobs_pb2.CampaignConfig, str]:
    if not request.HasField("config"):
        raise InvalidArgument("config", "is required")
    key = validate_idempotency_key(request.idempotency_key)
    return validate_config(request.config, allowed_hosts=allowed_hosts), key


def validate_idempotency_key(key: str, field: str = "idempotency_key") -> str:
    """An idempotency key: optional, bounded, printable."""
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise InvalidArgument(field, f"must be at most {IDEMPOTENCY_KEY_MAX} characters")
    if key and not key.isprintable():
        raise InvalidArgument(field, "must not contain control characters")
    return key


def validate_user_id(user_id: str, field: str) -> str:
    if not user_id:
        raise InvalidArgument(field, "is required for service tokens")
    if len(user_id) > TEXT_MAX or not user_id.isprintable():
        raise InvalidArgument(field, f"must be 1-{TEXT_MAX} printable characters")
    return user_id


def validate_job_id(job_id: str, field: str = "job_id") -> str:
    if not job_id:
        raise InvalidArgument(field, "is required")
    if not is_job_id(job_id):
        raise InvalidArgument(field, "must look like job_ followed by 32 hex digits")
    return job_id


def validate_page_size(page_size: int, field: str = "page_size") -> int:
    if page_size == 0:
        return PAGE_SIZE_DEFAULT
    if not 1 <= page_size <= PAGE_SIZE_MAX:
        raise InvalidArgument(field, f"must be between 1 and {PAGE_SIZE_MAX} (0 for default)")
    return page_size


def validate_status(value: int, field: str = "status") -> int:
    if value not in jobs_pb2.JobStatus.values():
        raise InvalidArgument(field, f"unknown value {value}")
    return value
