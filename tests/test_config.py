"""Settings: every one is documented, and the env forms parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dynamic_sessions_mcp.config import PoolAuth, Settings
from dynamic_sessions_mcp.pools.base import PoolType

ROOT = Path(__file__).resolve().parents[1]


def env_names() -> set[str]:
    return {f"DSMCP_{name.upper()}" for name in Settings.model_fields}


def test_every_setting_is_in_env_example_and_readme() -> None:
    example = set(re.findall(r"^# (DSMCP_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    readme = set(re.findall(r"`(DSMCP_[A-Z0-9_]+)`", (ROOT / "README.md").read_text()))
    assert example == env_names()
    assert env_names() <= readme


def test_env_forms_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSMCP_POOL_TYPE", "shell")
    monkeypatch.setenv("DSMCP_POOL_AUTH", "token")
    monkeypatch.setenv("DSMCP_POOL_TOKEN", "s3cret-value")
    monkeypatch.setenv("DSMCP_ALLOWED_HOSTS", "mcp.example.com, other.example.com")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.pool_type is PoolType.SHELL and settings.pool_auth is PoolAuth.TOKEN
    assert settings.allowed_hosts == ["mcp.example.com", "other.example.com"]
    assert "s3cret-value" not in repr(settings)


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSMCP_POOL_TYPE", "node")
    with pytest.raises(ValueError, match="pool_type"):
        Settings(_env_file=None)  # type: ignore[call-arg]
