"""Local pool settings, built by the CLI from `Settings` (the pool never reads the bridge's config)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class LocalPoolType(enum.StrEnum):
    PYTHON = "python"
    SHELL = "shell"


@dataclass(frozen=True)
class LocalPoolConfig:
    pool_type: LocalPoolType = LocalPoolType.PYTHON
    # Bearer token required on every request; None accepts any non-empty bearer (as a dev emulator).
    token: str | None = None
    # Serve the emulated built-in MCP endpoint at /mcp, checking this key in `x-ms-apikey`; None = off.
    mcp_api_key: str | None = None
    max_sessions: int = 20
    cooldown_s: float = 300.0
    warm_sessions: int = 2  # pre-started sandboxes waiting for a new identifier
    default_timeout_s: float = 220.0  # Azure's maximum per execution
    max_timeout_s: float = 220.0
    max_upload_bytes: int = 128 * 1024 * 1024
    memory_mb: int = 2048  # cgroup memory limit per session, where cgroups are writable
    pids_max: int = 256
    cpus: float = 1.0
    # Where session directories live; None means a private temporary directory.
    data_dir: Path | None = None
    # Development only: run sessions without isolation (loud warning at start).
    unsafe_no_sandbox: bool = False
    # Isolation tier: "auto" (bubblewrap, falling back to Landlock where namespaces are blocked),
    # "bubblewrap", "landlock" (force tier B) or "none" (same as unsafe_no_sandbox).
    isolation: str = "auto"
