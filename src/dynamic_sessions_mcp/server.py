"""Builds the MCPServer: the pool connection, tool registration, instructions, lifespan."""

from __future__ import annotations

import logging
import secrets
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from mcp.server import MCPServer
from mcp.types import ToolAnnotations

from dynamic_sessions_mcp import __version__, file_links, resources, tools
from dynamic_sessions_mcp.config import PoolAuth, Settings
from dynamic_sessions_mcp.identity import SandboxLocks, SandboxTracker, SessionIdentity
from dynamic_sessions_mcp.local_files import LocalFiles
from dynamic_sessions_mcp.long_runs import ExecutionHandles
from dynamic_sessions_mcp.outputs import OUTPUTS_DIR, OutputLimits
from dynamic_sessions_mcp.pools.base import Pool, PoolType
from dynamic_sessions_mcp.pools.credentials import EntraTokenAuth, StaticTokenAuth, entra_credential
from dynamic_sessions_mcp.pools.mcp_endpoint import connect_mcp_endpoint_pool
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
    api_key: str | None = None  # PoolAuth.API_KEY: the x-ms-apikey of the pool's MCP endpoint

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
            api_key=settings.pool_api_key.get_secret_value() if settings.pool_api_key else None,
        )


def instructions(pool_type: PoolType, *, background: bool) -> str:
    later = (
        "; a run that would outlive the call continues in the background and returns an `execution` "
        "handle for get_execution."
        if background
        else "."
    )
    return (
        f"Runs code in isolated sandboxes of a {pool_type.value} session pool. Each sandbox has its own "
        "files in /mnt/data, and (on Python pools) its own interpreter whose variables persist between "
        "calls. Tools take an optional `session` handle: every result names the handle it used (field "
        "`session`). Pass that handle back to keep working in the same sandbox. Leave it empty to use "
        "this connection's own session; when the connection has none, each call starts a fresh sandbox "
        "and returns its new handle. new_session starts another sandbox; end_session discards one. "
        "Sandboxes are recycled after some idle minutes: a result then says that variables and files "
        "were reset. The sandboxes have no network access. Long outputs come back as their head and "
        f"tail, with the full text saved under /mnt/data/{OUTPUTS_DIR}" + later
    )


def _description(tool: str, pool_type: PoolType, state: tools.AppState) -> str:
    python = pool_type is PoolType.PYTHON
    budget = f"{state.call_budget_s:g}"
    background = (
        " Long outputs come back as head and tail; the full text is saved in the session (`saved`)."
        + (
            f" With timeout_seconds over {budget}, a run still going after about {budget} s continues in the "
            "background: the result then has status 'running' and an `execution` handle for get_execution."
            if state.pool.supports_background
            else ""
        )
    )
    allowed = f" (allowed: {state.local_files.describe()})" if state.local_files else ""
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
            + background
        ),
        "run_shell": (
            "Run a bash command line in the session's sandbox, in /mnt/data; returns the exit code, stdout "
            "and stderr. "
            + (
                "This is a Python pool: the command runs through a subprocess of the session's kernel."
                if python
                else "This is a Shell pool: each call is a fresh bash process; only files persist."
            )
            + background
        ),
        "get_execution": (
            "Fetch the result of a run that continued in the background (its `execution` handle), "
            "waiting up to wait_seconds for it to finish."
        ),
        "upload_file": "Write a file into the session's /mnt/data (text, or base64 for binary). Overwrites."
        + (f" Or give local_path to upload a file from this machine{allowed}." if allowed else ""),
        "download_file": (
            "Fetch a file from the session's /mnt/data: text comes back as text, images as image content, "
            f"other files as an embedded resource. Files over {state.max_download_bytes:,} bytes come back "
            "as a resource link"
            + (" and a signed download URL" if state.links else "")
            + "."
            + (f" Or give local_path to save the file on this machine{allowed}." if allowed else "")
        ),
        "file_url": (
            "Get a short-lived URL to download (GET) or upload (PUT) a session file directly, so large "
            "files never pass through the conversation. Whoever uses it needs network access to this server."
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
        instructions=instructions(pool_type, background=state.pool.supports_background),
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
    looks = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    local = state.local_files is not None
    titles: dict[str, tuple[str, ToolAnnotations, Callable[..., Any]]] = {
        "run_python": ("Run Python", runs, tools.run_python),
        "run_shell": ("Run shell command", runs, tools.run_shell),
        "get_execution": ("Get execution", looks, tools.get_execution),
        "upload_file": ("Upload file", writes, tools.upload_file_local if local else tools.upload_file),
        "download_file": (
            "Download file",
            # Saving to a local path writes on this machine.
            writes if local else reads,
            tools.download_file_local if local else tools.download_file,
        ),
        "list_files": ("List files", reads, tools.list_files),
        "new_session": ("New session", creates, tools.new_session),
        "end_session": ("End session", writes, tools.end_session),
    }
    if state.links is not None:
        titles["file_url"] = ("File URL", looks, tools.file_url)
        mcp.custom_route(file_links.ROUTE, methods=list(file_links.METHODS))(
            file_links.file_endpoint(state.links, state.pool)
        )
    for name, (title, hints, fn) in titles.items():
        mcp.tool(
            name=name,
            title=title,
            description=_description(name, pool_type, state),
            annotations=hints,
        )(fn)
    resources.register(mcp)
    return mcp


def _pool_auth(target: PoolTarget) -> httpx.Auth | None:
    if target.auth is PoolAuth.ENTRA:
        return EntraTokenAuth(entra_credential(target.managed_identity_client_id))
    if target.auth is PoolAuth.TOKEN:
        if not target.token:
            raise ValueError("DSMCP_POOL_AUTH=token needs DSMCP_POOL_TOKEN")
        return StaticTokenAuth(target.token)
    return None  # NONE, and API_KEY (the MCP-endpoint backend sends its key itself)


async def connect_pool(
    settings: Settings, target: PoolTarget, http: httpx.AsyncClient, auth: httpx.Auth | None
) -> Pool:
    """The backend for `target`: the pool's MCP endpoint with an API key, else the REST data plane."""
    if target.auth is PoolAuth.API_KEY:
        return await connect_mcp_endpoint_pool(
            endpoint=target.endpoint,
            api_key=target.api_key or "",  # empty: a configuration error naming DSMCP_POOL_API_KEY
            pool_type=target.pool_type,
            http=http,
            retry_budget_s=settings.pool_retry_budget_s,
        )
    return await connect_rest_pool(
        endpoint=target.endpoint,
        api_version=target.api_version,
        pool_type=target.pool_type,
        http=http,
        auth=auth,
        retry_budget_s=settings.pool_retry_budget_s,
        output_streams_max_length=settings.output_spill_max_bytes,
    )


def _session_secret(settings: Settings) -> bytes:
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    logger.info("DSMCP_SESSION_SECRET is unset: using a random one (fine for a single process)")
    return secrets.token_bytes(32)


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, NO_PROXY, ...) names for `url`, as httpx would use it."""
    parts = urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


@asynccontextmanager
async def open_bridge(
    settings: Settings,
    target: PoolTarget,
    *,
    pool_auth: httpx.Auth | None = None,
    wrap_transport: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
    on_connected: Callable[[Pool], None] | None = None,
    serves_http: bool = False,
) -> AsyncIterator[MCPServer]:
    """Connect to the pool, build the server, and on exit release this process's sessions.

    `pool_auth` replaces the auth that `target` describes (tests pass an Entra auth whose
    credential counts its token fetches). The HTTP host uses `wrap_transport` to observe pool
    traffic and `on_connected` to reach the pool for readiness checks. `serves_http` selects the file
    transfers of HTTP transports (signed URLs, with DSMCP_PUBLIC_URL) over those of stdio (local
    paths, with DSMCP_LOCAL_FILE_DIRS).
    """
    auth = pool_auth or _pool_auth(target)
    timeout = httpx.Timeout(settings.pool_request_timeout_s)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    transport = None
    if wrap_transport is not None:
        # An explicit transport makes httpx skip HTTP(S)_PROXY, so pass the environment's proxy on.
        transport = wrap_transport(
            httpx.AsyncHTTPTransport(limits=limits, proxy=_environment_proxy(target.endpoint))
        )
    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as http:
        try:
            pool = await connect_pool(settings, target, http, auth)
            secret = _session_secret(settings)
            identity = SessionIdentity(secret)
            state = tools.AppState(
                pool=pool,
                identity=identity,
                locks=SandboxLocks(settings.busy_wait_s),
                tracker=SandboxTracker(),
                default_timeout_s=min(settings.default_timeout_s, settings.max_timeout_s),
                max_timeout_s=settings.max_timeout_s,
                max_upload_bytes=settings.max_upload_bytes,
                max_download_bytes=settings.max_download_bytes,
                outputs=OutputLimits(
                    settings.output_max_chars, settings.image_max_bytes, settings.max_images
                ),
                executions=ExecutionHandles(secret),
                call_budget_s=settings.call_budget_s,
                cancel_resets_session=settings.cancel_resets_session,
                max_resource_bytes=settings.max_resource_bytes,
                process_handle=identity.mint_handle(),
                links=(
                    file_links.LinkSigner(secret, settings.public_url, settings.signed_url_ttl_s)
                    if serves_http and settings.public_url
                    else None
                ),
                local_files=(
                    LocalFiles(settings.local_file_dirs)
                    if not serves_http and settings.local_file_dirs
                    else None
                ),
            )
            via = (
                "its MCP endpoint" if target.auth is PoolAuth.API_KEY else f"api-version {target.api_version}"
            )
            logger.info("connected to a %s pool (%s)", pool.pool_type.value, via)
            if on_connected is not None:
                on_connected(pool)
            try:
                async with anyio.create_task_group() as background:
                    background.start_soon(state.progress.run)
                    yield build_server(state, pool.pool_type)
                    background.cancel_scope.cancel()
            finally:
                for identifier in sorted(state.process_identifiers):
                    await tools.release_identifier(state, identifier)
        finally:
            if isinstance(auth, EntraTokenAuth):
                await auth.aclose()
