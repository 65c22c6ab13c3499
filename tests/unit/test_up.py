"""services.cli.up's ``make up`` helpers: signals recorded instead of raised, and a
database URL printed without its password (the launcher itself: tests/e2e/test_make_up.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from services.cli.up import StopRequest, redact_url


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.usefixtures("restored_handlers")
def test_signals_are_recorded_not_raised():
    stop = StopRequest()
    stop.install()
    assert not stop.requested()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(os.getpid(), sig)  # handled before os.kill returns to Python code
    assert stop.requested()
    assert stop.received == [signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://prospect:s3cr%40t@db:5432/prospect", "postgresql://prospect:***@db:5432/prospect"),
        ("postgresql+asyncpg://u:p@h/d?ssl=require", "postgresql+asyncpg://u:***@h/d?ssl=require"),
        ("postgresql://prospect@db/prospect", "postgresql://prospect@db/prospect"),
        ("sqlite+aiosqlite:////tmp/data/prospect.db", "sqlite+aiosqlite:////tmp/data/prospect.db"),
    ],
)  # fmt: skip
def test_redact_url(url, shown):
    assert redact_url(url) == shown
