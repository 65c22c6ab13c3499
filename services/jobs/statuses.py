"""Domain errors to gRPC statuses: the one boundary (docs/design.md, "The API").

Every RPC handler's error becomes a status here and only here (:func:`rich_status`, through
the handlers' :func:`unary` and :func:`streaming`; the auth interceptor answers through
:func:`abort` too): the code, the message, and ``google.rpc.Status`` details in the
``grpc-status-details-bin`` trailer, the gRPC richer error model. Every error carries an
``ErrorInfo`` (domain ``prospect``, a :class:`~services.common.errors.Reason`);
INVALID_ARGUMENT a ``BadRequest`` naming the field, RESOURCE_EXHAUSTED a ``QuotaFailure``,
and a limit that time frees or a shutdown a ``RetryInfo``. Anything unexpected is logged
and answered INTERNAL without detail, never with a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import (
    DOMAIN,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MalformedRequest,
    NotFound,
    PermissionDenied,
    ProspectError,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

R = TypeVar("R")

_CODES: dict[type[ProspectError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _code_of(exc: Exception) -> grpc.StatusCode | None:
    return next((code for kind, code in _CODES.items() if isinstance(exc, kind)), None)


def rich_status(exc: Exception) -> status_pb2.Status:
    """The ``google.rpc.Status`` answering ``exc``: its code, its message (the status
    details string, as the client sees it), an ``ErrorInfo``, and per kind a ``BadRequest``
    (the field and the rule), a ``QuotaFailure`` (whose limit, which setting) and a
    ``RetryInfo`` (when a retry can succeed). An error that is not one of :data:`_CODES`
    is INTERNAL, "internal error", with nothing of it sent."""
    code = _code_of(exc)
    if code is None or not isinstance(exc, ProspectError):
        return _status(grpc.StatusCode.INTERNAL, "internal error", [_info(Reason.INTERNAL)])
    details: list[Message] = [_info(exc.reason, exc.metadata)]
    if isinstance(exc, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=rule)
            for field, rule in exc.violations
        ]
        details.append(error_details_pb2.BadRequest(field_violations=violations))
    if isinstance(exc, ResourceExhausted):
        quota = error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=exc.quota)
        details.append(error_details_pb2.QuotaFailure(violations=[quota]))
    if isinstance(exc, ResourceExhausted | Unavailable) and exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(math.ceil(exc.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    details += [d for d in exc.details if isinstance(d, Message)]
    return _status(code, str(exc), details)


def _info(reason: Reason, metadata: dict[str, str] | None = None) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason.value, domain=DOMAIN, metadata=metadata)


def _status(code: grpc.StatusCode, message: str, details: list[Message]) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


async def abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """End the RPC with the status answering ``exc`` (:func:`rich_status`); an unexpected
    error is logged first."""
    if _code_of(exc) is None:
        log.exception("unexpected error", exc_info=exc)
    await context.abort_with_status(rpc_status.to_status(rich_status(exc)))
    raise AssertionError("abort_with_status returned")  # it raises AbortError


def unary(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await handler(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, exc)

    return wrapper


def streaming(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[R]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in handler(self, request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, exc)

    return wrapper
