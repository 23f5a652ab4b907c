"""The tool functions: validate input, resolve the session, call the Pool, shape the result."""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from dynamic_sessions_mcp import outputs, results
from dynamic_sessions_mcp.file_links import LinkSigner
from dynamic_sessions_mcp.identity import (
    InvalidHandle,
    SandboxLocks,
    SandboxTracker,
    SessionBusy,
    SessionIdentity,
    log_id,
)
from dynamic_sessions_mcp.local_files import LocalFiles, LocalPathRefused, read_chunks, write_atomically
from dynamic_sessions_mcp.long_runs import ExecutionHandles, ProgressTicker, Report, handoff_margin_s, poll
from dynamic_sessions_mcp.paths import PathRefused, to_pool_path
from dynamic_sessions_mcp.pools.base import Execution, ExecutionKind, Pool, PoolError, PoolErrorKind

logger = logging.getLogger(__name__)
T = TypeVar("T")

STDIO_CALLER = "local"
ANONYMOUS_CALLER = "anonymous"


@dataclass(frozen=True)
class BackgroundRun:
    """An execution that outlived its call and still runs in the pool."""

    handle: str  # the execution handle the model holds
    operation_id: str  # the pool's id of it
    kind: ExecutionKind


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
    outputs: outputs.OutputLimits
    executions: ExecutionHandles
    # Longer calls hand over to a background execution (where the pool can run one).
    call_budget_s: float
    cancel_resets_session: bool
    max_resource_bytes: int
    # The handle of the stdio (or in-memory) connection, fixed at process start.
    process_handle: str
    # Pool identifiers this process touched on stdio: released when the process exits.
    process_identifiers: set[str] = field(default_factory=set)
    # 2025-era HTTP sessions whose end already triggers a release.
    hooked_connections: set[str] = field(default_factory=set)
    # Signed file URLs: HTTP transports with a public URL only.
    links: LinkSigner | None = None
    # Local paths for upload_file/download_file: stdio with allowed directories only.
    local_files: LocalFiles | None = None
    # Background runs started here, by pool identifier: a new execution there waits for them.
    background: dict[str, BackgroundRun] = field(default_factory=dict)
    # Progress notifications for running executions (its task runs while the server does).
    progress: ProgressTicker = field(default_factory=ProgressTicker)


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


def resolve(ctx: Ctx, session: str) -> Target:
    """The handle and pool identifier a call reaches (see design §4)."""
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


def _reporter(ctx: Ctx) -> Report:
    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return report


# ---- executions -----------------------------------------------------------------------------


async def _stoppable(state: AppState, target: Target, work: Callable[[], Awaitable[T]]) -> T:
    """Run an execution; when the client cancels the call, stop the run in the pool as well.

    Cancelling the call closes the request to the pool, but neither Azure nor the local pool
    interrupts a run for that; ending the pool session is the one sure stop. The next call then
    says plainly that variables and files were reset (the tracker still knows the old sandbox).
    """
    try:
        return await work()
    except anyio.get_cancelled_exc_class():
        if state.cancel_resets_session:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                state.background.pop(target.identifier, None)
                try:
                    await state.pool.end_session(target.identifier)
                    logger.info("call cancelled: ended session %s to stop its run", log_id(target.identifier))
                except PoolError as exc:
                    logger.warning("could not stop session %s: %s", log_id(target.identifier), exc.message)
        raise


async def _refuse_if_running(state: AppState, target: Target) -> None:
    """A new execution may not queue behind a background run it cannot see."""
    run = state.background.get(target.identifier)
    if run is None:
        return
    try:
        running = await state.pool.get_execution(target.identifier, run.kind, run.operation_id) is None
    except PoolError as exc:
        if exc.kind is not PoolErrorKind.NOT_FOUND:
            raise ToolError(f"{exc.message} (session {target.handle})") from None
        running = False  # the pool forgot it (the session was reset): nothing to wait for
    if not running:
        state.background.pop(target.identifier, None)
        return
    raise ToolError(
        f"session {target.handle} is still running execution {run.handle} in the background; call "
        "get_execution with it to wait for the result, use another session (new_session), or "
        "end_session to stop it"
    )


async def _finish(
    state: AppState,
    target: Target,
    execution: Execution,
    spill_id: str,
    *,
    reset: bool,
    execution_handle: str = "",
) -> CallToolResult:
    shaped = await outputs.shape(state.pool, target.identifier, execution, spill_id, state.outputs)
    return results.execution_result(target.handle, shaped, reset=reset, execution_handle=execution_handle)


def _wait_limit_s(state: AppState) -> float:
    return max(1.0, state.call_budget_s - handoff_margin_s(state.call_budget_s))


async def _execute(
    ctx: Ctx, session: str, kind: ExecutionKind, source: str, timeout_seconds: int
) -> CallToolResult:
    state = ctx.request_context.lifespan_context
    timeout = _timeout(state, timeout_seconds)
    target = resolve(ctx, session)
    started = time.monotonic()
    handoff = state.pool.supports_background and timeout > state.call_budget_s
    handle = ""
    try:
        async with state.locks.hold(target.identifier):
            await _refuse_if_running(state, target)
            if handoff:
                handle = state.executions.mint(target.handle, kind)
                outcome, reset = await _stoppable(
                    state,
                    target,
                    lambda: _run_in_background(ctx, state, target, kind, source, timeout, handle),
                )
                spill_id = state.executions.spill_id(handle)
            else:
                run = state.pool.run_python if kind is ExecutionKind.PYTHON else state.pool.run_shell
                outcome = await _stoppable(
                    state,
                    target,
                    lambda: state.progress.around(
                        _reporter(ctx),
                        timeout,
                        lambda: _call(target, lambda: run(target.identifier, source, timeout)),
                    ),
                )
                reset = state.tracker.observe(target.identifier, outcome.sandbox_id)
                spill_id = secrets.token_hex(5)
    except SessionBusy:
        raise ToolError(
            f"session {target.handle} is busy with another execution; wait for it to finish, "
            "or run this in a fresh session from new_session"
        ) from None
    if outcome is None:
        elapsed = time.monotonic() - started
        wait = int(_wait_limit_s(state))
        return results.running_result(target.handle, handle, wait, elapsed_s=elapsed, reset=reset)
    return await _finish(state, target, outcome, spill_id, reset=reset)


async def _run_in_background(
    ctx: Ctx, state: AppState, target: Target, kind: ExecutionKind, source: str, limit_s: int, handle: str
) -> tuple[Execution | None, bool]:
    """Start an asynchronous execution and wait for it within the call budget. When it runs on,
    remember it and give None, so the caller returns its handle. Also: is the sandbox new?"""
    operation = state.executions.operation_id(_caller(ctx), handle)
    started = time.monotonic()
    deadline = started + _wait_limit_s(state)
    sandbox_id = await _call(
        target, lambda: state.pool.start_execution(target.identifier, kind, source, limit_s, operation)
    )
    reset = state.tracker.observe(target.identifier, sandbox_id)

    async def check() -> Execution | None:
        return await _call(target, lambda: state.pool.get_execution(target.identifier, kind, operation))

    outcome = await poll(check, deadline, _reporter(ctx), started, limit_s)
    if outcome is None:
        state.background[target.identifier] = BackgroundRun(handle, operation, kind)
    return outcome, reset


TimeoutArg = Annotated[int, Field(ge=0, le=220, description="Time limit; 0 = the server default.")]


async def run_python(
    code: Annotated[
        str, Field(description="Python source to run. The value of the last expression is returned.")
    ],
    ctx: Ctx,
    session: SessionArg = "",
    timeout_seconds: TimeoutArg = 0,
) -> Annotated[CallToolResult, results.ExecutionResult]:
    return await _execute(ctx, session, ExecutionKind.PYTHON, code, timeout_seconds)


async def run_shell(
    command: Annotated[str, Field(description="A bash command line, run in /mnt/data.")],
    ctx: Ctx,
    session: SessionArg = "",
    timeout_seconds: TimeoutArg = 0,
) -> Annotated[CallToolResult, results.ExecutionResult]:
    return await _execute(ctx, session, ExecutionKind.SHELL, command, timeout_seconds)


async def get_execution(
    execution: Annotated[
        str, Field(description="The `execution` handle of a run that continued in the background.")
    ],
    ctx: Ctx,
    wait_seconds: Annotated[
        int,
        Field(
            ge=0, le=600, description="Wait up to this long for it to end (capped by the server); 0 = look."
        ),
    ] = 0,
) -> Annotated[CallToolResult, results.ExecutionResult]:
    state = ctx.request_context.lifespan_context
    try:
        ref = state.executions.parse(execution)
    except InvalidHandle:
        raise ToolError(
            f"unknown execution handle {execution.strip()[:60]!r}: handles come from the `execution` field "
            "of a run_python or run_shell result"
        ) from None
    caller = _caller(ctx)
    target = Target(ref.session, state.identity.pool_identifier(caller, ref.session))
    operation = state.executions.operation_id(caller, ref.handle)
    limit = _wait_limit_s(state)
    started = time.monotonic()

    async def check() -> Execution | None:
        return await _call(target, lambda: state.pool.get_execution(target.identifier, ref.kind, operation))

    outcome = await poll(check, started + min(wait_seconds, limit), _reporter(ctx), started, limit)
    if outcome is None:
        return results.running_result(ref.session, ref.handle, int(limit), elapsed_s=None, reset=False)
    run = state.background.get(target.identifier)
    if run is not None and run.operation_id == operation:
        del state.background[target.identifier]
    reset = state.tracker.observe(target.identifier, outcome.sandbox_id)
    spill_id = state.executions.spill_id(ref.handle)
    return await _finish(state, target, outcome, spill_id, reset=reset, execution_handle=ref.handle)


# ---- files ----------------------------------------------------------------------------------


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


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """All of a stream when it is at most `limit` bytes; None (stop reading) once it is over."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


PathArg = Annotated[str, Field(description="Destination, relative to /mnt/data (or absolute under it).")]
EncodingArg = Annotated[Literal["utf-8", "base64"], Field(description="How `content` is encoded.")]
LocalPathArg = Annotated[
    str,
    Field(description="A path on this machine (inside the allowed directories) instead of inline content."),
]


async def upload_file(
    path: PathArg,
    content: Annotated[
        str, Field(description="The file content: text, or base64 when encoding is 'base64'.")
    ],
    ctx: Ctx,
    encoding: EncodingArg = "utf-8",
    session: SessionArg = "",
) -> Annotated[CallToolResult, results.FileResult]:
    state = ctx.request_context.lifespan_context
    pool_path = _pool_path(path, allow_root=False)
    data = _decode(content, encoding)
    if len(data) > state.max_upload_bytes:
        raise ToolError(f"the file is {len(data)} bytes; the upload limit is {state.max_upload_bytes} bytes")
    target = resolve(ctx, session)
    info = await _call(target, lambda: state.pool.upload(target.identifier, pool_path, data))
    return results.upload_result(target.handle, info)


async def upload_file_local(
    path: PathArg,
    ctx: Ctx,
    content: Annotated[
        str, Field(description="The file content (text, or base64); leave empty when using local_path.")
    ] = "",
    encoding: EncodingArg = "utf-8",
    session: SessionArg = "",
    local_path: LocalPathArg = "",
) -> Annotated[CallToolResult, results.FileResult]:
    """upload_file for stdio with allowed directories: also streams a local file in."""
    if not local_path.strip():
        return await upload_file(path, content, ctx, encoding, session)
    if content:
        raise ToolError("give either content or local_path, not both")
    state = ctx.request_context.lifespan_context
    assert state.local_files is not None, "registered only with local directories"
    pool_path = _pool_path(path, allow_root=False)
    try:
        file, size, source = state.local_files.open_for_reading(local_path)
    except LocalPathRefused as exc:
        raise ToolError(str(exc)) from None
    target = resolve(ctx, session)
    with file:
        info = await _call(
            target, lambda: state.pool.upload_stream(target.identifier, pool_path, read_chunks(file), size)
        )
    return results.upload_result(target.handle, info, source=source)


async def _download(ctx: Ctx, path: str, session: str, local_path: str) -> CallToolResult:
    state = ctx.request_context.lifespan_context
    pool_path = _pool_path(path, allow_root=False)
    destination = ""
    if local_path.strip():
        assert state.local_files is not None, "local_path is offered only with local directories"
        try:
            destination = state.local_files.target_for_writing(local_path)
        except LocalPathRefused as exc:
            raise ToolError(str(exc)) from None
    target = resolve(ctx, session)
    stream = await _call(target, lambda: state.pool.open_download(target.identifier, pool_path))
    try:
        if destination:
            try:
                size = await _call(target, lambda: write_atomically(destination, stream.chunks))
            except OSError as exc:
                raise ToolError(f"could not write {destination}: {exc.strerror or exc}") from None
            return results.local_download_result(
                target.handle, pool_path, size, stream.content_type, destination
            )
        data = None
        if stream.size is None or stream.size <= state.max_download_bytes:
            data = await _call(target, lambda: read_capped(stream.chunks, state.max_download_bytes))
    finally:
        await stream.close()
    if data is not None:
        return results.download_result(target.handle, pool_path, data, stream.content_type)
    options = results.LargeFileOptions(
        inline_limit=state.max_download_bytes,
        resource_limit=state.max_resource_bytes,
        url=state.links.sign("GET", target.identifier, pool_path) if state.links else None,
        local_dirs=state.local_files.describe() if state.local_files else "",
    )
    return results.large_file_result(target.handle, pool_path, stream.size, stream.content_type, options)


FilePathArg = Annotated[
    str, Field(description="File to fetch, relative to /mnt/data (or absolute under it).")
]


async def download_file(
    path: FilePathArg, ctx: Ctx, session: SessionArg = ""
) -> Annotated[CallToolResult, results.DownloadResult]:
    return await _download(ctx, path, session, "")


async def download_file_local(
    path: FilePathArg,
    ctx: Ctx,
    session: SessionArg = "",
    local_path: Annotated[
        str, Field(description="Save the file at this path on this machine (inside the allowed directories).")
    ] = "",
) -> Annotated[CallToolResult, results.DownloadResult]:
    """download_file for stdio with allowed directories: can also stream the file to a local path."""
    return await _download(ctx, path, session, local_path)


async def file_url(
    path: Annotated[str, Field(description="The file, relative to /mnt/data (or absolute under it).")],
    ctx: Ctx,
    direction: Annotated[
        Literal["download", "upload"], Field(description="download: a GET URL; upload: a PUT URL.")
    ] = "download",
    session: SessionArg = "",
) -> Annotated[CallToolResult, results.FileUrlResult]:
    state = ctx.request_context.lifespan_context
    assert state.links is not None, "registered only with signed URLs"
    pool_path = _pool_path(path, allow_root=False)
    target = resolve(ctx, session)
    signed = state.links.sign("PUT" if direction == "upload" else "GET", target.identifier, pool_path)
    return results.file_url_result(target.handle, pool_path, signed)


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
    target = resolve(ctx, session)
    files = await _call(target, lambda: state.pool.list_files(target.identifier, pool_path, recursive))
    return results.file_listing(target.handle, pool_path, files)


# ---- sessions -------------------------------------------------------------------------------


async def new_session(ctx: Ctx) -> Annotated[CallToolResult, results.SessionResult]:
    handle = ctx.request_context.lifespan_context.identity.mint_handle()
    text = f"new session {handle}: pass it as `session` to every tool call that should share its state"
    return results.session_result(handle, text)


async def end_session(ctx: Ctx, session: SessionArg = "") -> Annotated[CallToolResult, results.SessionResult]:
    state = ctx.request_context.lifespan_context
    if not session.strip() and ctx.headers is not None and not ctx.headers.get("mcp-session-id"):
        raise ToolError("name the session to end: pass its handle as `session`")
    target = resolve(ctx, session)
    try:
        await state.pool.end_session(target.identifier)
    except PoolError as exc:
        raise ToolError(f"{exc.message} (session {target.handle})") from None
    state.tracker.forget(target.identifier)
    state.process_identifiers.discard(target.identifier)
    state.background.pop(target.identifier, None)
    text = f"session {target.handle} ended: its sandbox, variables and files are gone"
    return results.session_result(target.handle, text, ended=True)
