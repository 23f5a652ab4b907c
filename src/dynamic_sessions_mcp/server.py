"""Builds the MCPServer: the pool connection, tool registration, instructions, lifespan."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from mcp.server import MCPServer
from mcp.types import ToolAnnotations

from dynamic_sessions_mcp import __version__, tools
from dynamic_sessions_mcp.config import PoolAuth, Settings
from dynamic_sessions_mcp.identity import SandboxLocks, SandboxTracker, SessionIdentity
from dynamic_sessions_mcp.pools.base import Pool, PoolType
from dynamic_sessions_mcp.pools.credentials import EntraTokenAuth, StaticTokenAuth, entra_credential
from dynamic_sessions_mcp.pools.rest import connect_rest_pool

logger = logging.getLogger(__name__)

SERVER_NAME = "dynamic-sessions"


@dataclass(frozen=True)
class PoolTarget:
    """Where the pool is and how to authenticate: from Settings, or the embedded local pool."""

    endpoint: str
    api_version: str
    pool_type: PoolType | None
    auth: PoolAuth
    token: str | None = None
    managed_identity_client_id: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolTarget:
        if settings.pool_endpoint is None:
            raise ValueError("DSMCP_POOL_ENDPOINT is not set")
        return cls(
            endpoint=settings.pool_endpoint,
            api_version=settings.pool_api_version,
            pool_type=settings.pool_type,
            auth=settings.pool_auth,
            token=settings.pool_token.get_secret_value() if settings.pool_token else None,
            managed_identity_client_id=settings.managed_identity_client_id,
        )


def instructions(pool_type: PoolType) -> str:
    return (
        f"Runs code in isolated sandboxes of a {pool_type.value} session pool. Each sandbox has its own "
        "files in /mnt/data, and (on Python pools) its own interpreter whose variables persist between "
        "calls. Tools take an optional `session` handle: every result names the handle it used (field "
        "`session`). Pass that handle back to keep working in the same sandbox. Leave it empty to use "
        "this connection's own session; when the connection has none, each call starts a fresh sandbox "
        "and returns its new handle. new_session starts another sandbox; end_session discards one. "
        "Sandboxes are recycled after some idle minutes: a result then says that variables and files "
        "were reset. The sandboxes have no network access."
    )


def _description(tool: str, pool_type: PoolType) -> str:
    python = pool_type is PoolType.PYTHON
    return {
        "run_python": (
            "Run Python code in the session's sandbox (cwd /mnt/data). "
            + (
                "This is a Python pool: a stateful IPython kernel per session; variables and imports "
                "persist between calls; the value of the "
                "last expression is returned as `result`, and displayed figures come back as images."
                if python
                else "This is a Shell pool: each call is a fresh `python3` process, so only files persist."
            )
        ),
        "run_shell": (
            "Run a bash command line in the session's sandbox, in /mnt/data; returns the exit code, stdout "
            "and stderr. "
            + (
                "This is a Python pool: the command runs through a subprocess of the session's kernel."
                if python
                else "This is a Shell pool: each call is a fresh bash process; only files persist."
            )
        ),
        "upload_file": "Write a file into the session's /mnt/data (text, or base64 for binary). Overwrites.",
        "download_file": (
            "Fetch a file from the session's /mnt/data: text comes back as text, images as image content, "
            "other files as an embedded resource."
        ),
        "list_files": "List files under the session's /mnt/data (or a subdirectory of it).",
        "new_session": "Start a new, empty sandbox and return its handle (pass it as `session` later).",
        "end_session": "Discard a session's sandbox with its variables and files, freeing pool capacity.",
    }[tool]


def build_server(state: tools.AppState, pool_type: PoolType) -> MCPServer:
    """An MCPServer whose tools serve `state` (already connected to its pool)."""

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[tools.AppState]:
        yield state

    mcp = MCPServer(
        SERVER_NAME,
        version=__version__,
        instructions=instructions(pool_type),
        lifespan=lifespan,
    )
    runs = ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
    )
    writes = ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
    )
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    creates = ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
    )
    titles = {
        "run_python": ("Run Python", runs),
        "run_shell": ("Run shell command", runs),
        "upload_file": ("Upload file", writes),
        "download_file": ("Download file", reads),
        "list_files": ("List files", reads),
        "new_session": ("New session", creates),
        "end_session": ("End session", writes),
    }
    for name, (title, hints) in titles.items():
        fn = getattr(tools, name)
        mcp.tool(
            name=name,
            title=title,
            description=_description(name, pool_type),
            annotations=hints,
        )(fn)
    return mcp


def _pool_auth(target: PoolTarget) -> httpx.Auth | None:
    if target.auth is PoolAuth.ENTRA:
        return EntraTokenAuth(entra_credential(target.managed_identity_client_id))
    if target.auth is PoolAuth.TOKEN:
        if not target.token:
            raise ValueError("DSMCP_POOL_AUTH=token needs DSMCP_POOL_TOKEN")
        return StaticTokenAuth(target.token)
    return None


def _session_secret(settings: Settings) -> bytes:
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    logger.info("DSMCP_SESSION_SECRET is unset: using a random one (fine for a single process)")
    return secrets.token_bytes(32)


@asynccontextmanager
async def open_bridge(
    settings: Settings, target: PoolTarget, *, pool_auth: httpx.Auth | None = None
) -> AsyncIterator[MCPServer]:
    """Connect to the pool, build the server, and on exit release this process's sessions.

    `pool_auth` replaces the auth that `target` describes (tests pass an Entra auth whose
    credential counts its token fetches).
    """
    auth = pool_auth or _pool_auth(target)
    timeout = httpx.Timeout(settings.pool_request_timeout_s)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        try:
            pool: Pool = await connect_rest_pool(
                endpoint=target.endpoint,
                api_version=target.api_version,
                pool_type=target.pool_type,
                http=http,
                auth=auth,
                retry_budget_s=settings.pool_retry_budget_s,
            )
            identity = SessionIdentity(_session_secret(settings))
            state = tools.AppState(
                pool=pool,
                identity=identity,
                locks=SandboxLocks(settings.busy_wait_s),
                tracker=SandboxTracker(),
                default_timeout_s=min(settings.default_timeout_s, settings.max_timeout_s),
                max_timeout_s=settings.max_timeout_s,
                max_upload_bytes=settings.max_upload_bytes,
                max_download_bytes=settings.max_download_bytes,
                process_handle=identity.mint_handle(),
            )
            logger.info("connected to a %s pool (api-version %s)", pool.pool_type.value, target.api_version)
            try:
                yield build_server(state, pool.pool_type)
            finally:
                for identifier in sorted(state.process_identifiers):
                    await tools.release_identifier(state, identifier)
        finally:
            if isinstance(auth, EntraTokenAuth):
                await auth.aclose()
