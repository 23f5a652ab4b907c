"""The tool functions: validate input, resolve the session, call the Pool, shape the result."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from dynamic_sessions_mcp import results
from dynamic_sessions_mcp.identity import (
    InvalidHandle,
    SandboxLocks,
    SandboxTracker,
    SessionBusy,
    SessionIdentity,
    log_id,
)
from dynamic_sessions_mcp.paths import PathRefused, display_path, to_pool_path
from dynamic_sessions_mcp.pools.base import Execution, Pool, PoolError

logger = logging.getLogger(__name__)
T = TypeVar("T")

STDIO_CALLER = "local"
ANONYMOUS_CALLER = "anonymous"


@dataclass
class AppState:
    """Per-process state shared by all tool calls (the lifespan's yield)."""

    pool: Pool
    identity: SessionIdentity
    locks: SandboxLocks
    tracker: SandboxTracker
    default_timeout_s: int
    max_timeout_s: int
    max_upload_bytes: int
    max_download_bytes: int
    # The handle of the stdio (or in-memory) connection, fixed at process start.
    process_handle: str
    # Pool identifiers this process touched on stdio: released when the process exits.
    process_identifiers: set[str] = field(default_factory=set)
    # 2025-era HTTP sessions whose end already triggers a release.
    hooked_connections: set[str] = field(default_factory=set)


Ctx = Context[AppState]
SessionArg = Annotated[
    str,
    Field(
        description="Session handle from new_session or an earlier result; empty = this connection's session."
    ),
]


@dataclass(frozen=True)
class Target:
    handle: str
    identifier: str


def _caller(ctx: Ctx) -> str:
    token = get_access_token()
    if token is not None:
        return token.client_id or token.subject or ANONYMOUS_CALLER
    return STDIO_CALLER if ctx.headers is None else ANONYMOUS_CALLER


def _resolve(ctx: Ctx, session: str) -> Target:
    state = ctx.request_context.lifespan_context
    caller = _caller(ctx)
    if session.strip():
        try:
            handle = state.identity.check_handle(session.strip())
        except InvalidHandle:
            raise ToolError(
                f"unknown session handle {session.strip()[:40]!r}: handles come from new_session or from the "
                "`session` field of an earlier result; leave `session` empty to use this connection's session"
            ) from None
    elif ctx.headers is None:
        handle = state.process_handle
    elif mcp_session := ctx.headers.get("mcp-session-id"):
        handle = state.identity.connection_handle(mcp_session)
        _release_at_connection_end(ctx, state, mcp_session, state.identity.pool_identifier(caller, handle))
    else:
        handle = state.identity.mint_handle()
    identifier = state.identity.pool_identifier(caller, handle)
    if ctx.headers is None:
        state.process_identifiers.add(identifier)
    return Target(handle, identifier)


def _release_at_connection_end(ctx: Ctx, state: AppState, mcp_session: str, identifier: str) -> None:
    """Delete the pool session when a 2025-era HTTP session ends (DELETE, idle timeout, shutdown).

    mcp 2.3 exposes the connection's exit stack only privately; without it the pool's cooldown
    still reaps the session.
    """
    if mcp_session in state.hooked_connections:
        return
    connection = getattr(ctx.request_context.session, "_connection", None)
    exit_stack = getattr(connection, "exit_stack", None)
    if exit_stack is None:
        logger.warning("cannot hook the end of MCP sessions in this SDK version; relying on pool cooldown")
        return
    state.hooked_connections.add(mcp_session)

    async def release() -> None:
        state.hooked_connections.discard(mcp_session)
        await release_identifier(state, identifier)

    exit_stack.push_async_callback(release)


async def release_identifier(state: AppState, identifier: str) -> None:
    """End a pool session; shielded and bounded so it also runs during shutdown."""
    state.tracker.forget(identifier)
    with anyio.move_on_after(10, shield=True):
        try:
            await state.pool.end_session(identifier)
            logger.info("released session %s", log_id(identifier))
        except PoolError as exc:
            logger.warning("could not release session %s: %s", log_id(identifier), exc.message)


async def _call(target: Target, work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except PoolError as exc:
        raise ToolError(f"{exc.message} (session {target.handle})") from None


def _timeout(state: AppState, timeout_seconds: int) -> int:
    if timeout_seconds > state.max_timeout_s:
        raise ToolError(f"timeout_seconds must be at most {state.max_timeout_s}")
    return timeout_seconds or state.default_timeout_s


async def _execute(
    ctx: Ctx, session: str, run: Callable[[Pool, str], Awaitable[Execution]]
) -> CallToolResult:
    state = ctx.request_context.lifespan_context
    target = _resolve(ctx, session)
    try:
        async with state.locks.hold(target.identifier):
            execution = await _call(target, lambda: run(state.pool, target.identifier))
    except SessionBusy:
        raise ToolError(
            f"session {target.handle} is busy with another execution; wait for it to finish, "
            "or run this in a fresh session from new_session"
        ) from None
    reset = state.tracker.observe(target.identifier, execution.sandbox_id)
    return results.execution_result(target.handle, execution, reset=reset)


async def run_python(
    code: Annotated[
        str, Field(description="Python source to run. The value of the last expression is returned.")
    ],
    ctx: Ctx,
    session: SessionArg = "",
    timeout_seconds: Annotated[
        int, Field(ge=0, le=220, description="Time limit; 0 = the server default.")
    ] = 0,
) -> Annotated[CallToolResult, results.ExecutionResult]:
    timeout = _timeout(ctx.request_context.lifespan_context, timeout_seconds)
    return await _execute(ctx, session, lambda pool, ident: pool.run_python(ident, code, timeout))


async def run_shell(
    command: Annotated[str, Field(description="A bash command line, run in /mnt/data.")],
    ctx: Ctx,
    session: SessionArg = "",
    timeout_seconds: Annotated[
        int, Field(ge=0, le=220, description="Time limit; 0 = the server default.")
    ] = 0,
) -> Annotated[CallToolResult, results.ExecutionResult]:
    timeout = _timeout(ctx.request_context.lifespan_context, timeout_seconds)
    return await _execute(ctx, session, lambda pool, ident: pool.run_shell(ident, command, timeout))


def _pool_path(path: str, *, allow_root: bool) -> str:
    try:
        pool_path = to_pool_path(path)
    except PathRefused as exc:
        raise ToolError(str(exc)) from None
    if not pool_path and not allow_root:
        raise ToolError("path must name a file under /mnt/data, e.g. 'data.csv'")
    return pool_path


def _decode(content: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ToolError(
                "content is not valid base64; send standard base64 or use encoding 'utf-8'"
            ) from None
    return content.encode("utf-8")


async def upload_file(
    path: Annotated[str, Field(description="Destination, relative to /mnt/data (or absolute under it).")],
    content: Annotated[
        str, Field(description="The file content: text, or base64 when encoding is 'base64'.")
    ],
    ctx: Ctx,
    encoding: Annotated[Literal["utf-8", "base64"], Field(description="How `content` is encoded.")] = "utf-8",
    session: SessionArg = "",
) -> Annotated[CallToolResult, results.FileResult]:
    state = ctx.request_context.lifespan_context
    pool_path = _pool_path(path, allow_root=False)
    data = _decode(content, encoding)
    if len(data) > state.max_upload_bytes:
        raise ToolError(f"the file is {len(data)} bytes; the upload limit is {state.max_upload_bytes} bytes")
    target = _resolve(ctx, session)
    info = await _call(target, lambda: state.pool.upload(target.identifier, pool_path, data))
    return results.upload_result(target.handle, info)


async def download_file(
    path: Annotated[str, Field(description="File to fetch, relative to /mnt/data (or absolute under it).")],
    ctx: Ctx,
    session: SessionArg = "",
) -> Annotated[CallToolResult, results.FileResult]:
    state = ctx.request_context.lifespan_context
    pool_path = _pool_path(path, allow_root=False)
    target = _resolve(ctx, session)
    download = await _call(target, lambda: state.pool.download(target.identifier, pool_path))
    if len(download.data) > state.max_download_bytes:
        raise ToolError(
            f"{display_path(pool_path)} is {len(download.data)} bytes, over the "
            f"{state.max_download_bytes}-byte download limit; read a part of it with run_python or "
            "run_shell (e.g. head), or compress it first"
        )
    return results.download_result(target.handle, pool_path, download)


async def list_files(
    ctx: Ctx,
    path: Annotated[
        str, Field(description="Directory to list, relative to /mnt/data; empty = /mnt/data.")
    ] = "",
    recursive: Annotated[bool, Field(description="Also list subdirectories.")] = False,
    session: SessionArg = "",
) -> Annotated[CallToolResult, results.ListFilesResult]:
    state = ctx.request_context.lifespan_context
    pool_path = _pool_path(path, allow_root=True)
    target = _resolve(ctx, session)
    files = await _call(target, lambda: state.pool.list_files(target.identifier, pool_path, recursive))
    return results.file_listing(target.handle, pool_path, files)


async def new_session(ctx: Ctx) -> Annotated[CallToolResult, results.SessionResult]:
    handle = ctx.request_context.lifespan_context.identity.mint_handle()
    text = f"new session {handle}: pass it as `session` to every tool call that should share its state"
    return results.session_result(handle, text)


async def end_session(ctx: Ctx, session: SessionArg = "") -> Annotated[CallToolResult, results.SessionResult]:
    state = ctx.request_context.lifespan_context
    if not session.strip() and ctx.headers is not None and not ctx.headers.get("mcp-session-id"):
        raise ToolError("name the session to end: pass its handle as `session`")
    target = _resolve(ctx, session)
    try:
        await state.pool.end_session(target.identifier)
    except PoolError as exc:
        raise ToolError(f"{exc.message} (session {target.handle})") from None
    state.tracker.forget(target.identifier)
    state.process_identifiers.discard(target.identifier)
    text = f"session {target.handle} ended: its sandbox, variables and files are gone"
    return results.session_result(target.handle, text, ended=True)
