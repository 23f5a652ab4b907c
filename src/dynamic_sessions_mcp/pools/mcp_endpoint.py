"""A session pool reached through its built-in MCP endpoint as a `Pool` (DSMCP_POOL_AUTH=api-key).

For callers that hold only the pool's API key (`x-ms-apikey`, from fetchMCPServerCredentials) and
no Entra role. The endpoint (shared/reference/dynamic-sessions-api.md §9) has a launch tool that mints
an `environmentId` and two run tools answering stdout and stderr; no files, no exit codes, no result
values, no images, no session delete. Everything else is built from commands (mcp_commands):

- Tools are discovered with tools/list. The launch tool was renamed during the preview, so any of
  LAUNCH_TOOLS will do; either run tool may be missing (each can stand in for the other). Any
  other set is a configuration error naming what was found.
- Executions end with a report line (exit code; Python: raised or not, last value, images).
  There are no background executions: each call waits for its run.
- Upload: the bytes go as base64, appended to a hidden part file that a shell command moves into
  place only when its size and sha256 (computed in the environment) match ours. Chunk sizes: a
  shell command line most likely reaches the environment as one `bash -c` argument, which Linux
  caps at 128 KiB (MAX_ARG_STRLEN), so shell chunks carry UPLOAD_CHUNK_B64 = 96 KiB of base64,
  leaving room for the command around it. Python pools run Python in a kernel, which gets the code
  as a message without that cap: there each chunk is a Python call carrying
  PYTHON_UPLOAD_CHUNK_B64 = 1 MiB of base64 (a JSON-RPC body of about that size), ten times fewer
  round trips. A call the endpoint refuses as too large (413, 400, a JSON-RPC error, "Argument
  list too long") ran nothing, so its piece goes again in halves and later uploads stay smaller.
- Download: the size first, then base64 chunks of up to DOWNLOAD_CHUNK_BYTES (stdout has no argv
  cap, but the endpoint may cut long output: a short or undecodable chunk halves the chunk size,
  down to MIN_DOWNLOAD_CHUNK_BYTES, and is fetched again), then size and sha256 compared with what
  arrived. list_files uses `find -printf`, delete_file `rm -rf` (GNU userland assumed, as in the
  pool images).

Session mapping, the state this backend adds. Our session (the pool identifier that identity.py
derives) maps to an environmentId in an in-process LRU map. There is no deterministic scheme: the
platform mints environmentIds and offers no lookup, so another process cannot find the environment
this one launched. Consequences, by decision:

- Several bridge replicas: each replica launches its own environment for a session it has not
  seen, so state is shared only when a session's calls reach the same replica. Use one replica, or
  route by Mcp-Session-Id / session handle (sticky routing) for API-key pools.
- Bridge restart: the map is gone; the next call of every session launches a new, empty
  environment (the old one lingers until the pool's cooldown reaps it). The agent is told of a reset
  only where this process saw the old environment (like SandboxTracker's per-process limit): a
  session's first call after a restart starts empty without a notice.
- Expiry (the pool reaped the environment after its cooldown; the endpoint answers "environment not
  found / not existing"): executions and uploads launch a new environment and run there; the
  execution's `sandbox_id` is the environmentId, so the tools' reset detection tells the agent that
  variables and files were reset. Downloads, listings and deletes do not relaunch: they fail with
  that reset message instead of a puzzling "no such file".
- end_session: the endpoint cannot delete an environment, so the files under /mnt/data are removed
  and the mapping forgotten; the interpreter lives on, unreachable, until the cooldown.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from dynamic_sessions_mcp.pools import mcp_commands as cmd
from dynamic_sessions_mcp.pools.base import (
    Download,
    Execution,
    ExecutionKind,
    FileInfo,
    FileStream,
    Image,
    PoolError,
    PoolErrorKind,
    PoolInfo,
    PoolType,
)
from dynamic_sessions_mcp.pools.mcp_rpc import PROTOCOL_VERSION, RpcClient, RpcError, ToolResult
from dynamic_sessions_mcp.pools.pool_http import not_found, truncate

logger = logging.getLogger(__name__)
T = TypeVar("T")

LAUNCH_TOOLS = ("launchShell", "launchPythonEnvironment", "launchShellEnvironment")
RUN_PYTHON_TOOL = "runPythonCodeInRemoteEnvironment"
RUN_SHELL_TOOL = "runShellCommandInRemoteEnvironment"
UPLOAD_CHUNK_B64 = 96 * 1024
PYTHON_UPLOAD_CHUNK_B64 = 1024 * 1024
MIN_UPLOAD_CHUNK_BYTES = 3 * 1024
DOWNLOAD_CHUNK_BYTES = 768 * 1024
MIN_DOWNLOAD_CHUNK_BYTES = 3 * 1024
MAP_CAPACITY = 10_000
_FILE_OP_TIMEOUT_S = 120.0  # one command of a transfer (hashing a large file included)
_EXPIRED = re.compile(
    r"(environment|session)\b.{0,120}?\b(not (found|exist)|does ?n[o']t exist|no longer exists|expired|"
    r"is not existing)",
    re.IGNORECASE | re.DOTALL,
)
RESET_MESSAGE = (
    "This session's sandbox expired (the pool recycles idle environments): variables and files were "
    "reset. The next call starts a new sandbox."
)


@dataclass(frozen=True)
class ToolNames:
    """The endpoint's tools this backend uses; a missing run tool is emulated with the other."""

    launch: str
    python: str | None
    shell: str | None


def choose_tools(names: Iterable[str], endpoint: str) -> ToolNames:
    offered = set(names)
    launch = next((name for name in LAUNCH_TOOLS if name in offered), None)
    python = RUN_PYTHON_TOOL if RUN_PYTHON_TOOL in offered else None
    shell = RUN_SHELL_TOOL if RUN_SHELL_TOOL in offered else None
    if launch is None or (python is None and shell is None):
        raise PoolError(
            PoolErrorKind.CONFIG,
            f"The MCP endpoint at {endpoint} offers the tools {sorted(offered) or 'none'}, not those of a "
            f"session pool's built-in MCP server: a launch tool ({' / '.join(LAUNCH_TOOLS)}) and "
            f"{RUN_PYTHON_TOOL} or {RUN_SHELL_TOOL}. Check that DSMCP_POOL_ENDPOINT is the pool's "
            "mcpServerEndpoint; if the pool's tools were renamed, this bridge needs an update.",
        )
    return ToolNames(launch, python, shell)


def is_expired_message(text: str) -> bool:
    """Does an endpoint's error text say the environment does not exist (any more)?"""
    return _EXPIRED.search(text) is not None


class _Expired(Exception):
    """The endpoint says the environment does not exist (any more)."""


class EnvironmentMap:
    """identifier -> environmentId, per process and bounded (least recently used goes first)."""

    def __init__(self, capacity: int = MAP_CAPACITY) -> None:
        self._capacity = capacity
        self._map: OrderedDict[str, str] = OrderedDict()

    def get(self, identifier: str) -> str | None:
        environment = self._map.get(identifier)
        if environment is not None:
            self._map.move_to_end(identifier)
        return environment

    def set(self, identifier: str, environment: str) -> None:
        self._map[identifier] = environment
        self._map.move_to_end(identifier)
        if len(self._map) > self._capacity:
            self._map.popitem(last=False)

    def forget(self, identifier: str, environment: str | None = None) -> None:
        """Drop the mapping (only if it still names `environment`, when given)."""
        if environment is None or self._map.get(identifier) == environment:
            self._map.pop(identifier, None)


@dataclass(frozen=True)
class _Streams:
    stdout: str
    stderr: str


@dataclass(frozen=True)
class _ReportedRun:
    environment: str
    stdout: str  # without the report line
    stderr: str
    report: str | None  # what followed the marker; None when the report never came
    duration_ms: int


class McpEndpointPool:
    """The Pool protocol over a pool's MCP endpoint; see the module docstring for the mapping."""

    def __init__(
        self,
        *,
        rpc: RpcClient,
        tools: ToolNames,
        pool_type: PoolType,
        execution_margin_s: float = 30.0,
    ) -> None:
        self._rpc = rpc
        self._tools = tools
        self._pool_type = pool_type
        self._execution_margin_s = execution_margin_s
        self._environments = EnvironmentMap()
        self._launching: dict[str, asyncio.Task[str]] = {}
        self._spare: str | None = None  # launched to detect the pool type, handed to the first session
        self._download_chunk = DOWNLOAD_CHUNK_BYTES
        self._upload_cap_b64 = PYTHON_UPLOAD_CHUNK_B64  # lowered when the endpoint refuses a size

    @property
    def pool_type(self) -> PoolType:
        return self._pool_type

    @property
    def supports_background(self) -> bool:
        return False

    async def describe(self) -> PoolInfo:
        return PoolInfo(
            pool_type=self._pool_type, api_version=f"mcp {PROTOCOL_VERSION}", endpoint=self._rpc.endpoint
        )

    # ---- executions -------------------------------------------------------------------------

    async def run_python(self, identifier: str, code: str, timeout_s: float) -> Execution:
        run = await self._run_reported(identifier, ExecutionKind.PYTHON, code, timeout_s)
        report = cmd.parse_python_report(run.report) if run.report is not None else None
        if report is None:
            return _unreported(run, None)
        return Execution(
            succeeded=report.ok,
            stdout=run.stdout,
            stderr=run.stderr,
            result=report.value if report.has_value else None,
            images=[image for fmt, data in report.images if (image := _image(fmt, data))],
            duration_ms=run.duration_ms,
            sandbox_id=run.environment,
        )

    async def run_shell(self, identifier: str, command: str, timeout_s: float) -> Execution:
        run = await self._run_reported(identifier, ExecutionKind.SHELL, command, timeout_s)
        exit_code = cmd.parse_exit_code(run.report) if run.report is not None else None
        if exit_code is None:
            return _unreported(run, -1)
        stderr = run.stderr
        if exit_code == cmd.TIMEOUT_EXIT_CODE:
            stderr = _with_note(stderr, f"the command was stopped at its time limit of {timeout_s:g} s")
        return Execution(
            succeeded=exit_code == 0,
            stdout=run.stdout,
            stderr=stderr,
            exit_code=exit_code,
            duration_ms=run.duration_ms,
            sandbox_id=run.environment,
        )

    async def _run_reported(
        self, identifier: str, kind: ExecutionKind, source: str, timeout_s: float
    ) -> _ReportedRun:
        """Run the agent's code or command, wrapped to end with a report line, and split that off."""
        marker = cmd.new_marker()
        started = time.monotonic()
        if kind is ExecutionKind.PYTHON:
            code = cmd.python_runner(source, marker, timeout_s)
            environment, streams = await self._in_environment(
                identifier, lambda env: self._python(env, code, timeout_s, execution=True), relaunch=True
            )
        else:
            line = cmd.shell_runner(source, marker, timeout_s)
            environment, streams = await self._in_environment(
                identifier, lambda env: self._shell(env, line, timeout_s, execution=True), relaunch=True
            )
        stdout, report = cmd.split_report(streams.stdout, marker)
        duration_ms = int((time.monotonic() - started) * 1000)
        return _ReportedRun(environment, stdout, streams.stderr, report, duration_ms)

    async def start_execution(
        self, identifier: str, kind: ExecutionKind, source: str, timeout_s: float, execution_id: str
    ) -> str | None:
        raise PoolError(
            PoolErrorKind.CONFIG, "A pool's MCP endpoint cannot run executions in the background."
        )

    async def get_execution(
        self, identifier: str, kind: ExecutionKind, execution_id: str
    ) -> Execution | None:
        raise PoolError(PoolErrorKind.NOT_FOUND, "A pool's MCP endpoint keeps no background executions.")

    # ---- files ------------------------------------------------------------------------------

    async def upload(self, identifier: str, path: str, data: bytes) -> FileInfo:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.upload_stream(identifier, path, one(), len(data))

    async def upload_stream(
        self, identifier: str, path: str, chunks: AsyncIterable[bytes], size: int | None
    ) -> FileInfo:
        directory, name = _split(path)
        hidden = f".{name}.dsmcp-{secrets.token_hex(4)}.part"  # next to the file, so the move is atomic
        part = f"{directory}/{hidden}" if directory else hidden
        environment, answer = await self._in_environment(
            identifier, lambda env: self._command(env, cmd.start_upload(directory, part)), relaunch=True
        )
        self._expect_ok(answer, f"could not create /mnt/data/{path}")
        digest = hashlib.sha256()
        sent = 0
        try:
            async for piece in _rechunk(chunks, self._upload_chunk()):
                digest.update(piece)
                sent += len(piece)
                await self._append(identifier, environment, part, piece)
            answer = await self._expiring(
                identifier, environment, cmd.finish_upload(part, path, sent, digest.hexdigest())
            )
        except BaseException:
            await self._discard_part(environment, part)
            raise
        if answer.stdout.startswith(cmd.MISMATCH):
            got = answer.stdout.split()[1:3]
            raise PoolError(
                PoolErrorKind.SERVER,
                f"The upload of /mnt/data/{path} arrived damaged ({' bytes, sha256 '.join(got)} instead of "
                f"{sent} bytes, sha256 {digest.hexdigest()}); nothing was written. Try again.",
            )
        self._expect_ok(answer, f"could not write /mnt/data/{path}")
        if size is not None and size != sent:
            logger.warning("upload of %d bytes announced %d", sent, size)
        return FileInfo(path=path, size=sent)

    def _in_kernel(self) -> bool:
        return self._pool_type is PoolType.PYTHON and self._tools.python is not None

    def _upload_chunk(self) -> int:
        """Raw bytes per upload call (learned smaller when the endpoint refused a size)."""
        limit = PYTHON_UPLOAD_CHUNK_B64 if self._in_kernel() else UPLOAD_CHUNK_B64
        return min(limit, self._upload_cap_b64) // 4 * 3

    async def _append(self, identifier: str, environment: str, part: str, piece: bytes) -> None:
        """Append `piece` to the part file. A call the endpoint refused (too large, or a command line
        too long to start) ran nothing, so the piece is sent again in halves, and later uploads use
        the smaller size."""
        encoded = base64.b64encode(piece).decode()
        in_kernel = self._in_kernel()
        append = cmd.append_chunk_python if in_kernel else cmd.append_chunk
        refused = False
        try:
            answer = await self._expiring(identifier, environment, append(part, encoded), python=in_kernel)
        except PoolError as exc:
            if exc.kind not in (PoolErrorKind.TOO_LARGE, PoolErrorKind.BAD_REQUEST):
                raise
            refused, failure = True, exc
        else:
            refused = "Argument list too long" in answer.stderr and cmd.OK not in answer.stdout
            failure = _unexpected("could not write an upload", answer)
        if not refused:
            self._expect_ok(answer, "could not write an upload")
            return
        if len(piece) <= MIN_UPLOAD_CHUNK_BYTES:
            raise failure
        half = len(piece) // 2
        if (half + 2) // 3 * 4 < self._upload_cap_b64:
            self._upload_cap_b64 = (half + 2) // 3 * 4
            logger.info("the MCP endpoint refused a large call: uploads now send %d bytes", half)
        await self._append(identifier, environment, part, piece[:half])
        await self._append(identifier, environment, part, piece[half:])

    async def download(self, identifier: str, path: str) -> Download:
        stream = await self.open_download(identifier, path)
        try:
            data = b"".join([chunk async for chunk in stream.chunks])
        finally:
            await stream.close()
        return Download(data=data, content_type=None)

    async def open_download(self, identifier: str, path: str) -> FileStream:
        environment, answer = await self._in_environment(
            identifier, lambda env: self._command(env, cmd.stat_file(path), reads=True), relaunch=False
        )
        words = answer.stdout.split()
        if words[:1] == [cmd.MISSING]:
            raise not_found(path)
        if words[:1] == [cmd.NOT_A_FILE]:
            raise PoolError(PoolErrorKind.BAD_REQUEST, f"/mnt/data/{path} is a folder, not a file.")
        if words[:1] != [cmd.OK] or len(words) < 2 or not words[1].isdigit():
            raise _unexpected(f"could not read /mnt/data/{path}", answer)
        size = int(words[1])
        return FileStream(
            content_type=None,
            size=size,
            chunks=self._read(identifier, environment, path, size),
            close=_nothing,
        )

    async def _read(self, identifier: str, environment: str, path: str, size: int) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        offset = 0
        while offset < size:
            length = min(self._download_chunk, size - offset)
            answer = await self._expiring(
                identifier, environment, cmd.read_chunk(path, offset, length), reads=True
            )
            piece = _decode(answer.stdout)
            if piece is None or len(piece) != length:
                if self._download_chunk > MIN_DOWNLOAD_CHUNK_BYTES:
                    self._download_chunk = max(MIN_DOWNLOAD_CHUNK_BYTES, self._download_chunk // 2)
                    logger.info(
                        "MCP endpoint output looks cut: download chunks now %d bytes", self._download_chunk
                    )
                    continue
                raise PoolError(
                    PoolErrorKind.SERVER,
                    f"/mnt/data/{path} changed while it was being read, or the pool's MCP endpoint cuts "
                    "its output; try again.",
                )
            digest.update(piece)
            offset += length
            yield piece
        answer = await self._expiring(identifier, environment, cmd.sha256_of(path), reads=True)
        words = answer.stdout.split()
        if words != [cmd.OK, str(size), digest.hexdigest()]:
            raise PoolError(
                PoolErrorKind.SERVER,
                f"The download of /mnt/data/{path} does not match the file in the session (size or sha256 "
                "differ: it changed while being read, or arrived damaged); try again.",
            )

    async def list_files(self, identifier: str, path: str, recursive: bool) -> list[FileInfo]:
        directory = path.strip("/")
        _, answer = await self._in_environment(
            identifier,
            lambda env: self._command(env, cmd.list_dir(directory, recursive), reads=True),
            relaunch=False,
        )
        lines = answer.stdout.rstrip("\n").split("\n")
        if lines[-1:] == [cmd.MISSING]:
            raise PoolError(
                PoolErrorKind.NOT_FOUND,
                f"no such folder: /mnt/data/{directory} (use list_files to see what the session has).",
                status=404,
            )
        listing = _decode(lines[0]) if len(lines) == 2 and lines[1] == cmd.OK else None
        if listing is None:
            raise _unexpected(f"could not list /mnt/data/{directory}", answer)
        return [info for record in listing.split(b"\0") if record if (info := _file_info(record, directory))]

    async def delete_file(self, identifier: str, path: str) -> None:
        _, answer = await self._in_environment(
            identifier, lambda env: self._command(env, cmd.delete(path)), relaunch=False
        )
        if answer.stdout.strip() == cmd.MISSING:
            raise not_found(path)
        self._expect_ok(answer, f"could not delete /mnt/data/{path}")

    async def end_session(self, identifier: str) -> None:
        environment = self._environments.get(identifier)
        if environment is None:
            # Nothing was launched here for it; still make sure the endpoint answers (readiness
            # probes end a made-up session, as a cheap call that needs the credential).
            await self._rpc.list_tools()
            return
        self._environments.forget(identifier, environment)
        try:
            answer = await self._command(environment, cmd.wipe_data())
        except _Expired:
            return  # already gone, which is what we wanted
        self._expect_ok(answer, "could not remove the session's files")

    async def detect_pool_type(self) -> None:
        """Python pools run Python in a kernel (state persists), Shell pools per call; ask the
        environment, and keep it for the first session instead of wasting it."""
        environment = await self._launch()
        probe = "print('ipykernel' in __import__('sys').modules)"
        streams = await self._python(environment, probe, 60.0, reads=True)
        self._pool_type = PoolType.PYTHON if streams.stdout.strip() == "True" else PoolType.SHELL
        self._spare = environment
        logger.info("the pool's MCP endpoint is a %s pool", self._pool_type.value)

    # ---- environments -----------------------------------------------------------------------

    async def _environment(self, identifier: str) -> str:
        """The session's environment; launched (once, however many calls wait) when it has none."""
        environment = self._environments.get(identifier)
        if environment is not None:
            return environment
        task = self._launching.get(identifier)
        if task is None:
            task = asyncio.ensure_future(self._launch())
            self._launching[identifier] = task

            def settle(done: asyncio.Task[str]) -> None:
                self._launching.pop(identifier, None)
                if not done.cancelled() and done.exception() is None:
                    self._environments.set(identifier, done.result())

            task.add_done_callback(settle)
        return await asyncio.shield(task)

    async def _launch(self) -> str:
        if self._spare is not None:
            environment, self._spare = self._spare, None
            return environment
        try:
            result = await self._rpc.call_tool(self._tools.launch, {}, idempotent=True)
        except RpcError as exc:
            raise PoolError(
                PoolErrorKind.SERVER,
                f"The pool's MCP endpoint could not launch an environment: {exc.message}",
            ) from None
        minted = (result.structured or {}).get("environmentId")
        found = re.search(r"environmentId\W+([\w-]+)", result.text)
        environment = minted if isinstance(minted, str) and minted else found.group(1) if found else ""
        if result.is_error or not environment:
            said = truncate(result.text) or "no environmentId"
            raise PoolError(PoolErrorKind.SERVER, f"The pool's MCP endpoint launched no environment: {said}.")
        logger.debug("launched an environment")
        return environment

    async def _in_environment(
        self, identifier: str, work: Callable[[str], Awaitable[T]], *, relaunch: bool
    ) -> tuple[str, T]:
        """Run `work` in the session's environment. When that environment expired: launch a new one
        and run `work` there (relaunch), or fail with the reset message."""
        environment = await self._environment(identifier)
        try:
            return environment, await work(environment)
        except _Expired:
            self._environments.forget(identifier, environment)
            if not relaunch:
                raise PoolError(PoolErrorKind.NOT_FOUND, RESET_MESSAGE) from None
        logger.info("environment expired: launching a new one")
        environment = await self._environment(identifier)
        try:
            return environment, await work(environment)
        except _Expired:
            self._environments.forget(identifier, environment)
            raise PoolError(
                PoolErrorKind.SERVER, "The pool's MCP endpoint lost a new environment at once; try again."
            ) from None

    async def _expiring(
        self, identifier: str, environment: str, command: str, *, reads: bool = False, python: bool = False
    ) -> _Streams:
        """A command (or Python source) in the middle of a transfer: an expired environment ends it."""
        try:
            if python:
                return await self._python(environment, command, _FILE_OP_TIMEOUT_S)
            return await self._command(environment, command, reads=reads)
        except _Expired:
            self._environments.forget(identifier, environment)
            raise PoolError(PoolErrorKind.NOT_FOUND, RESET_MESSAGE + " Start the transfer again.") from None

    async def _discard_part(self, environment: str, part: str) -> None:
        try:
            await self._command(environment, cmd.remove_quietly(part))
        except (PoolError, _Expired):
            logger.debug("could not remove an unfinished upload")

    # ---- tool calls -------------------------------------------------------------------------

    async def _command(self, environment: str, line: str, *, reads: bool = False) -> _Streams:
        """A file-operation command: its own time limit; `reads` only (so it may be retried)."""
        return await self._shell(environment, line, _FILE_OP_TIMEOUT_S, reads=reads)

    async def _shell(
        self, environment: str, line: str, timeout_s: float, *, execution: bool = False, reads: bool = False
    ) -> _Streams:
        if self._tools.shell is None:
            source = cmd.shell_via_python(line)
            return await self._python(environment, source, timeout_s, execution=execution, reads=reads)
        arguments = {"environmentId": environment, "shellCommand": line}
        return await self._run_tool(self._tools.shell, arguments, timeout_s, execution, reads)

    async def _python(
        self, environment: str, source: str, timeout_s: float, *, execution: bool = False, reads: bool = False
    ) -> _Streams:
        if self._tools.python is None:
            line = cmd.python_via_shell(source)
            return await self._shell(environment, line, timeout_s, execution=execution, reads=reads)
        arguments = {"environmentId": environment, "pythonCode": source}
        return await self._run_tool(self._tools.python, arguments, timeout_s, execution, reads)

    async def _run_tool(
        self, name: str, arguments: dict[str, str], timeout_s: float, execution: bool, reads: bool
    ) -> _Streams:
        read_s = timeout_s + self._execution_margin_s
        timeout = httpx.Timeout(connect=10.0, read=read_s, write=read_s, pool=read_s)
        try:
            result = await self._rpc.call_tool(
                name, dict(arguments), limits=timeout, idempotent=reads, is_execution=execution
            )
        except RpcError as exc:
            if is_expired_message(exc.message):
                raise _Expired from None
            raise PoolError(
                PoolErrorKind.BAD_REQUEST,
                f"The pool's MCP endpoint refused the call: {truncate(exc.message)}",
            ) from None
        return _streams(result)

    @staticmethod
    def _expect_ok(answer: _Streams, what: str) -> None:
        if answer.stdout.strip().split("\n")[-1:] != [cmd.OK]:
            raise _unexpected(what, answer)


# ---- helpers ------------------------------------------------------------------------------------


def _streams(result: ToolResult) -> _Streams:
    """stdout/stderr of a run tool's result; an error result is an expiry or a PoolError."""
    structured = result.structured or {}
    stdout, stderr = structured.get("stdout"), structured.get("stderr")
    if isinstance(stdout, str) or isinstance(stderr, str):
        return _Streams(stdout if isinstance(stdout, str) else "", stderr if isinstance(stderr, str) else "")
    if result.is_error:
        if is_expired_message(result.text):
            raise _Expired
        raise PoolError(
            PoolErrorKind.SERVER, f"The pool's MCP endpoint reported a failure: {truncate(result.text)}"
        )
    # Only text content ("stdout: ...\n\nstderr: ..."), as older endpoints answered.
    text = result.text.removeprefix("stdout: ")
    out, separator, err = text.rpartition("\n\nstderr: ")
    return _Streams(out, err) if separator else _Streams(text, "")


def _unreported(run: _ReportedRun, exit_code: int | None) -> Execution:
    note = (
        "the run ended without its status report: the environment may have been stopped (time limit, "
        "memory) or the pool's MCP endpoint cut the output"
    )
    return Execution(
        succeeded=False,
        stdout=run.stdout,
        stderr=_with_note(run.stderr, note),
        exit_code=exit_code,
        duration_ms=run.duration_ms,
        sandbox_id=run.environment,
    )


def _with_note(stderr: str, note: str) -> str:
    separator = "\n" if stderr and not stderr.endswith("\n") else ""
    return f"{stderr}{separator}[{note}]\n"


def _image(fmt: str, data: str) -> Image | None:
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return Image(format=fmt, data=decoded) if decoded else None


def _decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _file_info(record: bytes, directory: str) -> FileInfo | None:
    kind, size, mtime, name = [*record.split(b" ", 3), b"", b"", b""][:4]
    if not name:
        return None
    try:
        modified = datetime.datetime.fromtimestamp(float(mtime), datetime.UTC).isoformat()
    except ValueError:
        modified = None
    relative = name.decode("utf-8", "replace")
    return FileInfo(
        path=f"{directory}/{relative}" if directory else relative,
        size=int(size) if size.isdigit() else 0,
        is_dir=kind == b"d",
        modified=modified,
    )


def _split(path: str) -> tuple[str, str]:
    directory, _, name = path.strip("/").rpartition("/")
    if not name:
        raise PoolError(PoolErrorKind.BAD_REQUEST, "A file path under /mnt/data is required, not a folder.")
    return directory, name


def _unexpected(what: str, answer: _Streams) -> PoolError:
    said = truncate(answer.stderr or answer.stdout) or "no output"
    return PoolError(PoolErrorKind.SERVER, f"The session {what}: {said}")


async def _rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Pieces of exactly `size` bytes (the last one shorter), whatever sizes come in."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


async def _nothing() -> None:
    """Closing a download stream: each chunk is its own request, so nothing stays open."""


async def connect_mcp_endpoint_pool(
    *,
    endpoint: str,
    api_key: str,
    pool_type: PoolType | None,
    http: httpx.AsyncClient,
    retry_budget_s: float = 20.0,
) -> McpEndpointPool:
    """Handshake, discover the tools, and detect the pool type when not given (which launches one
    environment, kept for the first session)."""
    endpoint = endpoint.strip()
    if not endpoint.startswith(("http://", "https://")):
        raise PoolError(
            PoolErrorKind.CONFIG,
            "With DSMCP_POOL_AUTH=api-key, DSMCP_POOL_ENDPOINT must be the pool's mcpServerEndpoint "
            "(an https URL).",
        )
    if not api_key:
        raise PoolError(PoolErrorKind.CONFIG, "DSMCP_POOL_AUTH=api-key needs DSMCP_POOL_API_KEY.")
    rpc = RpcClient(endpoint=endpoint, api_key=api_key, http=http, retry_budget_s=retry_budget_s)
    await rpc.initialize()
    tools = choose_tools(await rpc.list_tools(), endpoint)
    pool = McpEndpointPool(rpc=rpc, tools=tools, pool_type=pool_type or PoolType.SHELL)
    if pool_type is None and tools.python is not None:
        await pool.detect_pool_type()
    return pool
