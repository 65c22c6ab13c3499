"""``prospect token`` mints only tokens the jobs service accepts: none that lives longer
than AUTH_JWT_MAX_LIFETIME_S."""

from __future__ import annotations

import jwt
import pytest

from services.cli.main import main

SECRET = "s" * 40


def test_a_token_longer_lived_than_the_service_accepts_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUTH_JWT_SECRET", SECRET)
    monkeypatch.delenv("AUTH_JWT_MAX_LIFETIME_S", raising=False)
    assert main(["token", "--user", "alice", "--ttl", str(86400 + 1)]) == 2
    assert "AUTH_JWT_MAX_LIFETIME_S" in capsys.readouterr().err
    monkeypatch.setenv("AUTH_JWT_MAX_LIFETIME_S", "7200")
    assert main(["token", "--user", "alice", "--ttl", "7201"]) == 2
    assert main(["token", "--user", "alice", "--ttl", "7200"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 7200
