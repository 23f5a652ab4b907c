"""The local pool's emulation of a session pool's built-in MCP endpoint, served at POST /mcp.

What it copies from Azure (shared/reference/dynamic-sessions-api.md §9): JSON-RPC 2.0 over plain HTTP
POST, protocol 2025-03-26, the methods initialize, tools/list and tools/call, a pool-wide key in
`x-ms-apikey` (401 without it), and three tools: `launchShell` mints an environmentId,
`runPythonCodeInRemoteEnvironment` and `runShellCommandInRemoteEnvironment` run in it and answer
`structuredContent: {stdout, stderr}` only (no exit code, result value, images or file tools).

An environmentId maps to a local session identifier. The session starts on the first command (Azure
allocates lazily too) and dies with the pool's cooldown; from then on the id answers a tool error
saying the environment is not existing, as Azure does, and the caller must launch a new one.
Executions go through the REST API's run path and the same SessionRegistry.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dynamic_sessions_mcp.local_pool.app import (
    ApiError,
    PoolApi,
    RunRequest,
    _truncate,
    error_response,
    read_json,
)
from dynamic_sessions_mcp.local_pool.config import LocalPoolType
from dynamic_sessions_mcp.local_pool.python_kernel import KernelStartError
from dynamic_sessions_mcp.local_pool.sessions import PoolAtCapacity
from dynamic_sessions_mcp.local_pool.shell import run_shell

if TYPE_CHECKING:
    from dynamic_sessions_mcp.local_pool.sessions import SessionRegistry

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-03-26"
LAUNCH = "launchShell"
RUN_PYTHON = "runPythonCodeInRemoteEnvironment"
RUN_SHELL = "runShellCommandInRemoteEnvironment"
# The tools an endpoint offers: today's three, and two sets seen during the preview (a Python pool's
# launcher with Python only, a shell workshop's launcher with shell only), which clients must handle.
TOOL_SETS: dict[str, tuple[str, ...]] = {
    "current": (LAUNCH, RUN_PYTHON, RUN_SHELL),
    "preview-python": ("launchPythonEnvironment", RUN_PYTHON),
    "preview-shell": ("launchShellEnvironment", RUN_SHELL),
}
_IDENTIFIER_PREFIX = "mcp-env-"

_ENVIRONMENT_ID = {"type": "string", "description": "The environmentId returned by the launch tool."}
_SCHEMAS: dict[str, dict[str, Any]] = {
    RUN_PYTHON: {
        "description": "Runs Python code in an existing environment.",
        "inputSchema": {
            "type": "object",
            "properties": {"environmentId": _ENVIRONMENT_ID, "pythonCode": {"type": "string"}},
            "required": ["environmentId", "pythonCode"],
        },
    },
    RUN_SHELL: {
        "description": "Runs a shell command in an existing environment.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "environmentId": _ENVIRONMENT_ID,
                "shellCommand": {"type": "string"},
                "execCommandAndArgs": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["environmentId"],
        },
    },
}
_LAUNCH_SCHEMA: dict[str, Any] = {
    "description": "Creates a new environment and returns its environmentId.",
    "inputSchema": {"type": "object", "properties": {}},
}


# JSON-RPC 2.0 error codes.
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Environment:
    identifier: str  # the local session behind it
    launched_at: float
    used: bool = False  # its session was created (so its life now follows the session's)


def _text_result(text: str, structured: dict[str, Any]) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "structuredContent": structured}


def _tool_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _string(arguments: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = arguments.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"'{key}' must be a string")
    return value


class McpEmulation:
    """Serves the emulated endpoint over `api`'s registry; environments live in this object.

    `tool_set` names one of TOOL_SETS. `output_limit` cuts stdout and stderr at that many bytes and
    `max_request_bytes` refuses larger requests (413), to stand for an endpoint with tighter limits
    than ours (Azure documents neither).
    """

    def __init__(
        self,
        api: PoolApi,
        api_key: str,
        *,
        tool_set: str = "current",
        output_limit: int | None = None,
        max_request_bytes: int | None = None,
    ) -> None:
        self._api = api
        self._registry: SessionRegistry = api.registry
        self._key = api_key.encode()
        self._tools = TOOL_SETS[tool_set]
        self._output_limit = output_limit
        self._max_request_bytes = max_request_bytes
        self._environments: dict[str, _Environment] = {}

    async def handle(self, request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get("x-ms-apikey", "").encode(), self._key):
            return error_response(
                401, "Unauthorized", "send the pool's MCP API key in the x-ms-apikey header"
            )
        if request.method != "POST":
            return error_response(405, "MethodNotAllowed", "send JSON-RPC requests with POST")
        declared = request.headers.get("content-length", "")
        if (
            self._max_request_bytes is not None
            and declared.isdigit()
            and int(declared) > self._max_request_bytes
        ):
            return error_response(
                413, "RequestTooLarge", f"requests are limited to {self._max_request_bytes} bytes"
            )
        try:
            message = await read_json(request)
        except ApiError as exc:
            code = INVALID_REQUEST if exc.code == "InvalidRequestBody" else PARSE_ERROR
            status = exc.status if exc.status == 413 else 400
            return JSONResponse(_rpc_error(None, code, exc.message), status_code=status)
        request_id = message.get("id")
        method = message.get("method")
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return JSONResponse(_rpc_error(request_id, INVALID_REQUEST, "not a JSON-RPC 2.0 request"), 400)
        if "id" not in message:
            return Response(status_code=202)  # a notification (notifications/initialized): nothing to say
        params = message.get("params")
        try:
            result = await self._method(method, params if isinstance(params, dict) else {})
        except RpcError as exc:
            return JSONResponse(_rpc_error(request_id, exc.code, exc.message))
        except Exception:
            logger.exception("MCP %s failed", method)
            return JSONResponse(_rpc_error(request_id, INTERNAL_ERROR, "the local pool failed; see its log"))
        return JSONResponse({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def _method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "initialize":
            return {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {"tools": {"call": True, "list": True}},
                "serverInfo": {"name": "dynamic-sessions-mcp local pool", "version": "1"},
            }
        if method == "tools/list":
            return {"tools": [{"name": name, **_SCHEMAS.get(name, _LAUNCH_SCHEMA)} for name in self._tools]}
        if method == "tools/call":
            name = params.get("name")
            arguments = params.get("arguments") or {}
            if not isinstance(arguments, dict):
                raise RpcError(INVALID_PARAMS, "'arguments' must be an object")
            return await self._call(str(name), arguments)
        raise RpcError(METHOD_NOT_FOUND, f"method {method!r} is not supported")

    async def _call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if name not in self._tools:
            raise RpcError(INVALID_PARAMS, f"unknown tool {name!r}")
        if name not in (RUN_PYTHON, RUN_SHELL):
            return self._launch()
        environment_id = _string(arguments, "environmentId")
        assert environment_id is not None
        environment = self._environments.get(environment_id)
        if environment is None or not self._alive(environment):
            self._environments.pop(environment_id, None)
            return _tool_error(
                f"Environment ID {environment_id} not found: the environment is not existing (its session "
                f"expired after the pool's cooldown, or it was never launched). Call {self._tools[0]} to "
                "start a new environment."
            )
        try:
            if name == RUN_PYTHON:
                return await self._run_python(environment, _string(arguments, "pythonCode") or "")
            return await self._run_shell(environment, arguments)
        except (PoolAtCapacity, KernelStartError) as exc:
            return _tool_error(str(exc))

    def _streams(self, stdout: str, stderr: str) -> dict[str, Any]:
        stdout, stderr = _truncate(stdout, self._output_limit), _truncate(stderr, self._output_limit)
        return _text_result(f"stdout: {stdout}\n\nstderr: {stderr}", {"stdout": stdout, "stderr": stderr})

    def _launch(self) -> dict[str, Any]:
        live = {session.identifier for session in self._registry.sessions()}
        for stale in [k for k, env in self._environments.items() if not self._alive(env, live)]:
            del self._environments[stale]
        environment_id = str(uuid.uuid4())
        self._environments[environment_id] = _Environment(_IDENTIFIER_PREFIX + environment_id, time.time())
        return _text_result(f"environmentId: {environment_id}", {"environmentId": environment_id})

    def _alive(self, environment: _Environment, live: Container[str] | None = None) -> bool:
        """A used environment lives as long as its session; an unused one for one cooldown. With
        `live` (the identifiers of live sessions) this is not a call on the session: its idle timer
        keeps running."""
        if environment.used:
            if live is not None:
                return environment.identifier in live
            return self._registry.get(environment.identifier) is not None
        return time.time() < environment.launched_at + self._registry.config.cooldown_s

    async def _start(self, environment: _Environment) -> None:
        await self._registry.acquire(environment.identifier)  # PoolAtCapacity leaves it unused
        environment.used = True

    def _request(self, **fields: Any) -> RunRequest:
        values: dict[str, Any] = {"code": None, "shell_command": None, "argv": None, "stdin": None}
        values.update(fields)
        return RunRequest(
            **values, timeout_s=self._registry.config.default_timeout_s, asynchronous=False, stream_max=None
        )

    async def _run_python(self, environment: _Environment, code: str) -> dict[str, Any]:
        await self._start(environment)
        if self._registry.config.pool_type is LocalPoolType.PYTHON:
            request = self._request(code=code)  # the session's kernel: variables persist
        else:
            request = self._request(argv=["python3", "-"], stdin=code)
        result = await self._api.run(environment.identifier, request)
        return self._streams(result.stdout, result.stderr)

    async def _run_shell(self, environment: _Environment, arguments: dict[str, Any]) -> dict[str, Any]:
        command = _string(arguments, "shellCommand", required=False)
        argv = arguments.get("execCommandAndArgs")
        if argv is not None and (
            not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
        ):
            raise RpcError(INVALID_PARAMS, "'execCommandAndArgs' must be a non-empty list of strings")
        if (command is None) == (argv is None):
            raise RpcError(INVALID_PARAMS, "send exactly one of 'shellCommand' and 'execCommandAndArgs'")
        await self._start(environment)
        if self._registry.config.pool_type is LocalPoolType.SHELL:
            result = await self._api.run(
                environment.identifier, self._request(shell_command=command, argv=argv)
            )
            return self._streams(result.stdout, result.stderr)
        # A Python pool's session: a separate sandboxed process in its directory, one at a time with
        # the kernel's executions (the session lock also keeps the reaper away while it runs).
        async with self._registry.exclusive(environment.identifier) as session:
            timeout_s = self._registry.config.default_timeout_s
            outcome = await run_shell(
                self._registry.sandbox_or_fail(),
                session.directory,
                command=command,
                argv=argv,
                timeout_s=timeout_s,
            )
        stderr = outcome.stderr
        if outcome.timed_out:
            stderr += f"\nthe command exceeded its timeout of {timeout_s:g} s and was killed\n"
        return self._streams(outcome.stdout, stderr)


def _rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
