"""One Settings object, read once from the environment (prefix DSMCP_) and `.env`, then passed down."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dynamic_sessions_mcp.pools.base import PoolType

DEFAULT_API_VERSION = "2025-10-02-preview"
LEGACY_API_VERSIONS = frozenset({"2024-02-02-preview", "2024-08-02-preview"})
CURRENT_API_VERSIONS = frozenset({"2024-10-02-preview", "2025-02-02-preview", "2025-10-02-preview"})


class PoolAuth(enum.StrEnum):
    ENTRA = "entra"  # azure-identity: DefaultAzureCredential, or a managed identity by client id
    TOKEN = "token"  # noqa: S105 - a mode name: a static bearer token from DSMCP_POOL_TOKEN
    NONE = "none"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSMCP_", env_file=".env", extra="ignore")

    # --- the pool -------------------------------------------------------------------------
    pool_endpoint: str | None = Field(
        default=None, description="Pool management endpoint; unset = start the embedded local pool."
    )
    pool_api_version: str = DEFAULT_API_VERSION
    pool_type: PoolType | None = Field(default=None, description="python | shell; unset = ask the pool.")
    pool_auth: PoolAuth = PoolAuth.ENTRA
    pool_token: SecretStr | None = None
    managed_identity_client_id: str | None = None
    pool_request_timeout_s: float = Field(default=30.0, gt=0)
    pool_retry_budget_s: float = Field(default=20.0, ge=0)

    # --- sessions and tools ---------------------------------------------------------------
    session_secret: SecretStr | None = Field(
        default=None, description="HMAC key for session identifiers; share it across replicas."
    )
    default_timeout_s: int = Field(default=50, ge=1, le=220)
    max_timeout_s: int = Field(default=220, ge=1, le=220)
    busy_wait_s: float = Field(default=10.0, ge=0, description="How long a call waits for the sandbox.")
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_download_bytes: int = Field(default=10 * 1024 * 1024, gt=0)

    # --- HTTP transport -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    stateless_http: bool = False

    # --- the embedded local pool ----------------------------------------------------------
    local_pool_type: PoolType = PoolType.PYTHON
    local_max_sessions: int = Field(default=20, ge=1)
    local_cooldown_s: float = Field(default=300.0, gt=0)
    local_warm_sessions: int = Field(default=2, ge=0)
    local_memory_mb: int = Field(default=2048, ge=64)
    local_pids_max: int = Field(default=256, ge=16)
    local_cpus: float = Field(default=1.0, gt=0)
    local_data_dir: Path | None = None
    local_unsafe_no_sandbox: bool = False

    log_level: str = "INFO"

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """Accept the env form `a.example.com,b.example.com`."""
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value
