"""Who is calling. AUTH_MODE=none: every caller is the one local user."""

from __future__ import annotations

from contextvars import ContextVar

_current_user: ContextVar[str] = ContextVar("prospect_user", default="local")


def current_user() -> str:
    """The caller of the RPC being served."""
    return _current_user.get()


def set_local_user(user: str) -> None:
    _current_user.set(user)
