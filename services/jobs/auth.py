"""Who is calling, and whether they may.

AUTH_MODE=none: every caller is the one local user (the server refuses this mode unless it
listens on loopback only). AUTH_MODE=jwt: every RPC but health and reflection carries
``authorization: Bearer <token>``, checked by :class:`AuthInterceptor` before the handler
runs. The keys come from exactly one of AUTH_JWT_SECRET (HS256), AUTH_JWT_PUBLIC_KEY (a
PEM: RS256 or ES256) or AUTH_JWKS_URL (the identity provider's RS256 and ES256 keys,
:mod:`services.jobs.jwks`); each key is bound to its one algorithm, never ``alg: none``.
``exp`` and ``sub`` required; ``nbf``, and ``iss``/``aud`` when configured, checked; a
token may live at most AUTH_JWT_MAX_LIFETIME_S (``exp`` no further ahead than that, and
``exp - iat`` no longer when ``iat`` is given), so a leaked long-lived token is not a
standing credential. A failure says only "missing bearer token" or "invalid token"
(reasons UNAUTHENTICATED and INVALID_TOKEN).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeGuard

import grpc
import jwt

from services.common.errors import MalformedRequest, Reason, Unauthenticated
from services.common.settings import Settings
from services.jobs.jwks import JwksKeys, SigningKey, key_of_pem

SERVICE_ROLE = "service"
LEEWAY_S = 10
# Open without a token: probes and tooling.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    role: str = "user"

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE


_principal: ContextVar[Principal | None] = ContextVar("prospect_principal", default=None)
_local = [Principal("local")]


def set_local_user(user_id: str) -> None:
    """The user every caller is in AUTH_MODE=none."""
    _local[0] = Principal(user_id)


def current_principal() -> Principal:
    """The caller of the RPC being served."""
    return _principal.get() or _local[0]


class TokenVerifier:
    """Checks bearer tokens against the configured key, algorithm, issuer and audience.

    :meth:`authenticate` is the way in for a request: with AUTH_JWKS_URL it first makes sure
    the key the token names is loaded; :meth:`verify` checks against the keys at hand."""

    def __init__(self, settings: Settings, *, jwks: JwksKeys | None = None) -> None:
        self._jwks: JwksKeys | None = None
        self._key: SigningKey | None = None
        if settings.auth_jwks_url:
            self._jwks = jwks or JwksKeys(settings.auth_jwks_url)
        elif settings.auth_jwt_public_key:
            self._key = key_of_pem(Path(settings.auth_jwt_public_key).read_bytes())
        else:
            self._key = SigningKey(settings.auth_jwt_secret, "HS256")
        self._issuer = settings.auth_jwt_issuer or None
        self._audience = settings.auth_jwt_audience or None
        self._max_lifetime_s = settings.auth_jwt_max_lifetime_s

    async def authenticate(self, token: str) -> Principal:
        if self._jwks is not None:
            await self._jwks.prepare(token)
        return self.verify(token)

    def _key_of(self, token: str) -> SigningKey:
        if self._jwks is None:
            assert self._key is not None
            return self._key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        key = self._jwks.key_for(kid if isinstance(kid, str) else None)
        if key is None:
            raise Unauthenticated("invalid token")
        return key

    def verify(self, token: str) -> Principal:
        key = self._key_of(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],  # one algorithm: no none, no HS/RS confusion
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_S,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthenticated("invalid token") from None
        self._check_lifetime(claims)
        sub, role = claims.get("sub"), claims.get("role", "user")
        if not isinstance(sub, str) or not sub or len(sub) > 200 or not sub.isprintable():
            raise Unauthenticated("invalid token")
        return Principal(sub, role if isinstance(role, str) else "user")

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """Refuse a token that lives longer than AUTH_JWT_MAX_LIFETIME_S: ``exp`` further
        ahead than that from now (with the clock leeway), or ``exp - iat`` longer. ``exp``
        and ``iat`` must be JSON numbers (PyJWT takes a numeric string too)."""
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _numeric(exp) or (iat is not None and not _numeric(iat)):
            raise Unauthenticated("invalid token")
        if exp - time.time() > self._max_lifetime_s + LEEWAY_S:
            raise Unauthenticated("invalid token")
        if iat is not None and exp - iat > self._max_lifetime_s:
            raise Unauthenticated("invalid token")


def _numeric(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bearer_token(metadata: Any) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    raise Unauthenticated("missing bearer token", reason=Reason.UNAUTHENTICATED)


def mint_token(
    key: str,
    sub: str,
    *,
    ttl_s: int = 3600,
    role: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    algorithm: str = "HS256",
) -> str:
    """A token for ``sub``: HS256 with a shared secret, or RS256 with a private key PEM."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "nbf": now, "exp": now + ttl_s}
    if role:
        claims["role"] = role
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, key, algorithm=algorithm)


class _Undecodable:
    """Stands for a request body that is not a valid message (answered INVALID_ARGUMENT
    after authentication, instead of grpc's UNKNOWN with the parser's words)."""


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _Undecodable()

    return deserialize


Abort = Callable[[grpc.aio.ServicerContext, Exception], Awaitable[NoReturn]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every RPC except health and reflection (AUTH_MODE=jwt; with no verifier
    every caller is the local user), and answers undecodable requests INVALID_ARGUMENT.
    The handler then sees the caller as :func:`current_principal`.

    ``abort`` ends an RPC with the status answering an error: the API's own
    (:func:`services.jobs.statuses.abort`), so these errors carry the same details as the rest."""

    def __init__(self, verifier: TokenVerifier | None, *, abort: Abort) -> None:
        self._verifier = verifier
        self._abort = abort

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        admit = self._admit
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = _principal.set(await admit(request, context))
                try:
                    return await inner(request, context)
                finally:
                    _principal.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                _principal.set(await admit(request, context))
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        return handler  # no client-streaming RPCs in this API

    async def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> Principal | None:
        principal = None
        if self._verifier is not None:
            try:
                token = bearer_token(context.invocation_metadata())
                principal = await self._verifier.authenticate(token)
            except Unauthenticated as exc:
                await self._abort(context, exc)
        if isinstance(request, _Undecodable):
            await self._abort(context, MalformedRequest("request: not a valid message"))
        return principal
