"""One Settings object, read once from the environment (prefix DSMCP_) and `.env`, then passed down."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dynamic_sessions_mcp.pools.base import PoolType

DEFAULT_API_VERSION = "2025-10-02-preview"
LEGACY_API_VERSIONS = frozenset({"2024-02-02-preview", "2024-08-02-preview"})
CURRENT_API_VERSIONS = frozenset({"2024-10-02-preview", "2025-02-02-preview", "2025-10-02-preview"})


class PoolAuth(enum.StrEnum):
    ENTRA = "entra"  # azure-identity: DefaultAzureCredential, or a managed identity by client id
    TOKEN = "token"  # noqa: S105 - a mode name: a static bearer token from DSMCP_POOL_TOKEN
    # The pool's built-in MCP endpoint (DSMCP_POOL_ENDPOINT = its mcpServerEndpoint) with the
    # pool-wide key from fetchMCPServerCredentials, for callers that hold no Entra role.
    API_KEY = "api-key"
    NONE = "none"


class InboundAuth(enum.StrEnum):
    """How HTTP callers of /mcp prove who they are; `none` only on a loopback bind."""

    API_KEY = "api-key"
    ENTRA = "entra"
    NONE = "none"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSMCP_", env_file=".env", extra="ignore")

    # --- the pool -------------------------------------------------------------------------
    pool_endpoint: str | None = Field(
        default=None,
        description="Pool management endpoint (api-key auth: the pool's mcpServerEndpoint); "
        "unset = start the embedded local pool.",
    )
    pool_api_version: str = DEFAULT_API_VERSION
    pool_type: PoolType | None = Field(default=None, description="python | shell; unset = ask the pool.")
    pool_auth: PoolAuth = PoolAuth.ENTRA
    pool_token: SecretStr | None = None
    pool_api_key: SecretStr | None = Field(
        default=None, description="x-ms-apikey of the pool's MCP endpoint (DSMCP_POOL_AUTH=api-key)."
    )
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

    # --- results, files and long runs -----------------------------------------------------
    output_max_chars: int = Field(
        default=16_000, ge=200, description="stdout, stderr and the result value: each cut to this."
    )
    output_spill_max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=4096, description="Largest output kept whole (the pool's stream limit)."
    )
    image_max_bytes: int = Field(default=256 * 1024, ge=4096, description="Larger images are downscaled.")
    max_images: int = Field(default=4, ge=0, description="Images attached per call; the rest are only saved.")
    max_resource_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="Cap of resources/read.")
    call_budget_s: float = Field(
        default=50.0, ge=1, description="Longest tool call; longer runs continue in the background."
    )
    cancel_resets_session: bool = Field(
        default=True, description="A cancelled execution ends its pool session (the only sure stop)."
    )
    signed_url_ttl_s: int = Field(default=900, ge=10, le=86_400, description="Lifetime of signed file URLs.")
    local_file_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="stdio: directories local_path may use; empty = off."
    )

    # --- HTTP transport -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    stateless_http: bool = False
    workers: int = Field(
        default=1, ge=1, le=64, description="HTTP worker processes on one port (needs stateless mode)."
    )
    public_url: str | None = Field(
        default=None,
        description="External base URL (https://host): OAuth resource metadata and signed file URLs.",
    )

    # --- inbound auth on /mcp (HTTP) ------------------------------------------------------
    auth: InboundAuth = InboundAuth.NONE
    api_keys: SecretStr | None = Field(default=None, description="Named keys: `name:key,name2:key2`.")
    api_keys_file: Path | None = Field(default=None, description="One `name:key` per line.")
    entra_tenant_id: str | None = None
    entra_audience: Annotated[list[str], NoDecode] = Field(default_factory=list)
    entra_issuer: Annotated[list[str], NoDecode] = Field(default_factory=list)
    entra_jwks_url: str | None = None

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
    local_isolation: Literal["auto", "bubblewrap", "landlock", "none"] = "auto"

    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT

    @field_validator("allowed_hosts", "entra_audience", "entra_issuer", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """Accept the env form `a.example.com,b.example.com`."""
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("local_file_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        """Accept the env form `/path/one,/path/two`."""
        if isinstance(value, str):
            return [d.strip() for d in value.split(",") if d.strip()]
        return value
