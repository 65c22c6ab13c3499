"""What the HTTP provider adapters share: one pooled client, one retry loop, secret scrubbing.

Every call of an adapter goes through :func:`send`, which

- waits on the provider's shared :class:`~services.common.providers.base.RateLimiter` before
  every attempt, then awaits the caller's ``on_slot`` hook (where the meter books the
  request) right before sending it;
- lets a provider-specific ``classify(response)`` decide what the answer means: an
  :class:`Outcome` that is ``ok`` (with the parsed value), ``retry`` (transient),
  ``rate_limited`` (the provider said "too many requests") or ``permanent``;
- treats timeouts, connection errors and bodies ``classify`` cannot parse (it raises
  ``ValueError``, ``KeyError`` or ``TypeError``) as transient;
- retries transient answers with exponential backoff and full jitter
  (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/), at most
  :attr:`RetryPolicy.max_attempts` times in all;
- on a rate-limit answer penalizes the shared limiter, so every worker backs off at once,
  for the provider's ``Retry-After`` when it sends one and the un-jittered backoff otherwise;
- raises :class:`~services.common.errors.PermanentProviderError` at once for a permanent
  answer, and :class:`~services.common.errors.TransientProviderError` (with ``retry_after``
  when the provider gave one) when the attempts run out or the provider asks for a wait
  longer than :attr:`RetryPolicy.max_wait_s`: the task is then retried later by JetStream.

Secrets: adapters send keys in headers or POST bodies, never in URLs, and pass them to
:func:`send`, which scrubs them from every message it logs or raises: raw, URL-encoded and
base64-encoded (alone or inside ``user:key``-style strings), and any piece of them of
:data:`PARTIAL_MIN` characters or more (a provider quoting a truncated key).
Messages name the httpx exception's class only: its text may carry a URL.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote, quote_plus

import httpx

from services.common import tracing
from services.common.errors import PermanentProviderError, TransientProviderError
from services.common.providers.base import Charge, RateLimiter
from services.common.providers.metering import Request, current_meter
from services.common.settings import Settings
from services.common.worker_metrics import RATELIMIT_WAIT, provider_request

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "prospect/0.1"
_REDACTED = "[redacted]"
_MAX_MESSAGE = 300  # provider messages are quoted, not dumped
PARTIAL_MIN = 8  # a run of this many characters of a key's forms is redacted


def make_client(settings: Settings) -> httpx.AsyncClient:
    """The one pooled client of a process, shared by every adapter; close it at shutdown.

    Each request may take ``provider_timeout_s`` per phase (connect, write, pool wait and
    each read). Redirects are not followed: the APIs do not redirect, and a redirect would
    carry the key headers to another host.
    """
    timeout = settings.provider_timeout_s
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=30),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How :func:`send` retries one call before leaving it to JetStream."""

    max_attempts: int = 4  # attempts in all, the first included
    base_delay_s: float = 0.5  # backoff before the second attempt; doubles each time
    max_delay_s: float = 8.0  # cap of one backoff
    max_wait_s: float = 30.0  # a longer wait asked by the provider is left to redelivery

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(max_attempts=settings.provider_max_attempts)

    def backoff(self, attempt: int) -> float:
        """The backoff ceiling after the ``attempt``-th attempt (1-based)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one HTTP answer means, as a provider's ``classify`` reads it."""

    verdict: Verdict
    value: T | None = None  # the parsed answer, for OK
    message: str = ""  # the cause, for the others (may quote the provider; send scrubs it)
    retry_after: float | None = None  # seconds the provider asked us to wait, if it did
    # What it was, for metrics (services.common.worker_metrics.PROVIDER_OUTCOMES); by
    # default the verdict's: ok, server_error, rate_limited, client_error.
    kind: str = ""


# An outcome's metrics kind when its classifier named none.
_KIND = {
    Verdict.OK: "ok",
    Verdict.RETRY: "server_error",
    Verdict.RATE_LIMITED: "rate_limited",
    Verdict.PERMANENT: "client_error",
}


def metrics_kind(outcome: Outcome[Any]) -> str:
    """What ``outcome`` counts as in the workers' metrics (one of PROVIDER_OUTCOMES)."""
    return outcome.kind or _KIND[outcome.verdict]


def ok(value: T) -> Outcome[T]:
    return Outcome(Verdict.OK, value)


def retry(message: str, retry_after: float | None = None, *, kind: str = "") -> Outcome[Any]:
    return Outcome(Verdict.RETRY, message=message, retry_after=retry_after, kind=kind)


def rate_limited(message: str, retry_after: float | None = None) -> Outcome[Any]:
    return Outcome(Verdict.RATE_LIMITED, message=message, retry_after=retry_after)


def permanent(message: str, *, kind: str = "") -> Outcome[Any]:
    """A refusal retrying cannot help; ``kind`` says which for metrics: ``auth_error``
    (the key), ``credits_exhausted``, or by default ``client_error``."""
    return Outcome(Verdict.PERMANENT, message=message, kind=kind)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object; ``ValueError`` (a malformed body) otherwise."""
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError("response body is not a JSON object")
    return body


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if any."""
    raw = response.headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _b64_forms(secret: bytes) -> set[str]:
    """The base64 (standard and URL-safe) of ``secret`` alone, and the part of its encoding
    that is the same wherever it sits in a longer string (``user:key``, ``key:``, HTTP Basic
    credentials): for each of the 3 byte alignments, the 4-character groups made of the
    secret's bytes only. Padding is left off: it follows the text any form is found in."""
    forms: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode()
        start = 4 if offset else 0  # the first group mixes in the filler bytes
        whole = (len(secret) + offset) // 3 * 4  # groups of the secret's bytes only
        inner = encoded[start:whole] if offset else encoded.rstrip("=")
        if offset == 0 or len(inner) >= PARTIAL_MIN:  # a short inner part is too common
            forms |= {inner, inner.translate(_URLSAFE)}
    return {form for form in forms if form}


_URLSAFE = str.maketrans("+/", "-_")


@lru_cache(maxsize=64)
def _forms(secret: str) -> tuple[frozenset[str], frozenset[str]]:
    """(whole forms shorter than :data:`PARTIAL_MIN`, every :data:`PARTIAL_MIN`-character
    piece of the longer ones) of ``secret``: raw, URL-encoded, base64."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret)} | _b64_forms(secret.encode())
    short = frozenset(form for form in forms if len(form) < PARTIAL_MIN)
    pieces = frozenset(
        form[i : i + PARTIAL_MIN] for form in forms for i in range(len(form) - PARTIAL_MIN + 1)
    )
    return short, pieces


def _redact_pieces(text: str, pieces: frozenset[str]) -> str:
    """``text`` with every run covered by one of ``pieces`` (all PARTIAL_MIN long) redacted."""
    covered_to = 0  # text[start:covered_to] is the run being redacted
    start = -1
    out: list[str] = []
    kept = 0
    for i in range(len(text) - PARTIAL_MIN + 1):
        if text[i : i + PARTIAL_MIN] in pieces:
            if i > covered_to or start < 0:  # a new run
                if start >= 0:
                    out += [text[kept:start], _REDACTED]
                    kept = covered_to
                start = i
            covered_to = i + PARTIAL_MIN
    if start >= 0:
        out += [text[kept:start], _REDACTED]
        kept = covered_to
    out.append(text[kept:])
    return "".join(out)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets``, shortened for a message: not raw, URL-encoded
    or base64-encoded (alone or within a longer encoded string such as ``user:key``), and not
    any piece of those of :data:`PARTIAL_MIN` characters or more (a key the provider
    truncated: ``Invalid key 'abcd1234...'``)."""
    for secret in secrets:
        if secret:
            short, pieces = _forms(secret)
            for form in sorted(short, key=len, reverse=True):
                text = text.replace(form, _REDACTED)
            if pieces:
                text = _redact_pieces(text, pieces)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _transport_failure(exc: httpx.TransportError) -> Outcome[Any]:
    # Only the class name: an httpx message may quote the request URL.
    if isinstance(exc, httpx.UnsupportedProtocol):
        return permanent(f"bad base URL ({type(exc).__name__})")
    if isinstance(exc, httpx.TimeoutException):
        return retry(f"timed out ({type(exc).__name__})", kind="timeout")
    return retry(f"connection failed ({type(exc).__name__})")


async def _request(
    client: httpx.AsyncClient, request: httpx.Request, provider: str, operation: str, attempt: int
) -> httpx.Response:
    """``client.send(request)``, in a client span when tracing is on: it names the provider,
    the operation and the answer's status, never the URL (or anything of the request)."""
    if not tracing.enabled():
        return await client.send(request)
    attributes: dict[str, str | int] = {
        tracing.PROVIDER: provider,
        tracing.OPERATION: operation,
        tracing.HTTP_METHOD: request.method,
        tracing.ATTEMPT: attempt,
    }
    name = f"{provider} {operation}"
    with tracing.span(name, kind=tracing.CLIENT, attributes=attributes) as span:
        response = await client.send(request)
        if span is not None:
            span.set_attribute(tracing.HTTP_STATUS, response.status_code)
        return response


async def send(
    client: httpx.AsyncClient,
    limiter: RateLimiter,
    provider: str,
    build_request: Callable[[], httpx.Request],
    classify: Callable[[httpx.Response], Outcome[T]],
    policy: RetryPolicy,
    *,
    secrets: Iterable[str] = (),
    on_slot: Callable[[], Awaitable[None]] | None = None,
    operation: str = "call",
) -> T:
    """Send the request ``build_request()`` makes until ``classify`` calls the answer OK.

    Returns the OK outcome's value. Raises :class:`PermanentProviderError` on a permanent
    answer and :class:`TransientProviderError` when the attempts run out; both name
    ``provider`` and the cause, never a secret. ``on_slot`` is awaited each time a slot
    comes, every attempt, right before the request leaves (it may raise to send nothing).
    It must not make a round trip: its varying latency between slot and request would
    bunch requests up on the way, and the provider would count some over its limit.
    Each attempt is counted in the workers' metrics under ``provider`` and ``operation``.
    """
    secrets = tuple(s for s in secrets if s)
    outcome: Outcome[T] = retry("no attempt made")
    for attempt in range(1, max(1, policy.max_attempts) + 1):
        waiting_since = time.monotonic()
        await limiter.acquire()
        RATELIMIT_WAIT.labels(provider).observe(time.monotonic() - waiting_since)
        if on_slot is not None:
            await on_slot()
        sent_at = time.monotonic()
        try:
            response = await _request(client, build_request(), provider, operation, attempt)
        except httpx.TransportError as exc:
            outcome = _transport_failure(exc)
        else:
            try:
                outcome = classify(response)
            except (ValueError, KeyError, TypeError):
                outcome = retry(
                    f"malformed response body (HTTP {response.status_code})", kind="malformed"
                )
        seconds = time.monotonic() - sent_at
        provider_request(provider, operation, metrics_kind(outcome), seconds)
        if outcome.verdict is Verdict.OK:
            return cast(T, outcome.value)
        message = scrub(outcome.message, secrets)
        if outcome.verdict is Verdict.PERMANENT:
            raise PermanentProviderError(provider, message)
        if outcome.verdict is Verdict.RATE_LIMITED:
            # Everyone waits: the provider's word when it gave one, else the full backoff.
            delay = outcome.retry_after
            if delay is None:
                delay = policy.backoff(attempt)
            await limiter.penalize(delay)
        else:
            delay = max(random.uniform(0, policy.backoff(attempt)), outcome.retry_after or 0.0)
        if attempt >= policy.max_attempts or delay > policy.max_wait_s:
            break
        log.warning(
            "%s: attempt %d/%d failed: %s; retrying in %.2fs",
            provider, attempt, policy.max_attempts, message, delay,
        )  # fmt: skip
        await asyncio.sleep(delay)
    tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
    raise TransientProviderError(
        provider,
        f"{scrub(outcome.message, secrets)} (gave up after {tries})",
        retry_after=outcome.retry_after,
    )


class HttpProvider:
    """Base of the HTTP adapters: the process's pooled client, the provider's shared rate
    limit, the retry policy and the API key, which :meth:`_send` keeps out of every error."""

    name: str
    billed = True  # a real provider bills every call it answers
    key_setting: str  # the Settings field holding this provider's API key
    base_url_setting: str  # the Settings field holding its base URL
    path: str = ""  # appended to the base URL: the endpoint's path

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        limiter: RateLimiter,
        *,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._limiter = limiter
        self._policy = retry_policy or RetryPolicy.from_settings(settings)
        self._key: str = getattr(settings, self.key_setting)
        self._url = getattr(settings, self.base_url_setting).rstrip("/") + self.path

    async def _paid(
        self,
        operation: str,
        price: float,
        build_request: Callable[[], httpx.Request],
        classify: Callable[[httpx.Response], Outcome[T]],
        billed: Callable[[T], float] | None = None,
    ) -> tuple[T, list[Charge]]:
        """One billable call, metered: its value and its charge (none when the provider
        bills nothing for it). ``billed(value)`` is what the provider bills for an answer
        (default: the list ``price``); a failed attempt is not billed.

        With a meter running (workers always run one), each attempt is one request on the
        books: when its rate-limit slot comes, the meter may refuse (the job was cancelled
        or failed: WorkStopped, nothing sent, nothing booked), else it opens the request's
        intent at list ``price``; once the attempt ends, the intent is settled at what the
        provider bills for it (see services.common.providers.metering).
        """
        meter = current_meter.get()
        under_way: Request | None = None  # the attempt sent last, not settled yet

        async def on_slot() -> None:
            nonlocal under_way
            if meter is None:
                return
            if under_way is not None:  # another attempt: the last one failed, unbilled
                meter.settle(under_way, 0.0)
                under_way = None
            under_way = await meter.open(self.name, operation, price)

        try:
            value = await self._send(build_request, classify, on_slot, operation)
        except Exception:
            # No answer: the attempt under way failed (a cancelled task settles nothing: its
            # intent stands at list price, as if its worker had been killed).
            if meter is not None and under_way is not None:
                meter.settle(under_way, 0.0)
            raise
        actual = price if billed is None else billed(value)
        if meter is not None and under_way is not None:
            meter.settle(under_way, actual)
        if not actual:
            return value, []
        return value, [Charge(self.name, operation, actual, metered=meter is not None)]

    async def _send(
        self,
        build_request: Callable[[], httpx.Request],
        classify: Callable[[httpx.Response], Outcome[T]],
        on_slot: Callable[[], Awaitable[None]] | None = None,
        operation: str = "call",
    ) -> T:
        return await send(
            self._client, self._limiter, self.name, build_request, classify, self._policy,
            secrets=(self._key,), on_slot=on_slot, operation=operation,
        )  # fmt: skip
