"""The local pool's HTTP API: Azure's dynamic-sessions data plane, both contracts, on loopback.

Routes exist only for the api-versions that have them (shared/reference/dynamic-sessions-api.md
§2): the legacy contract (`code/execute`, `files/upload`, `files/content/{path}`, `files`) on
2024-02-02-preview and 2024-08-02-preview; the current one (`executions`, `files`, `files/{name}`,
`files/{name}/content`) from 2024-10-02-preview; session management from 2025-02-02-preview;
`.management/stopSession` and `recursive` listing on 2025-10-02-preview. Errors use Azure's
`{"error": {"code", "message"}}` body plus `x-ms-error-code`. GET metadata adds fields of our
own: `poolType`, `isolation` and `readySessions` (warm kernels waiting right now).

Pool types: a Python pool runs `code` in the session's IPython kernel. A Shell pool runs
`shellCommand` (bash) or `execCommandAndArgs` (+ `stdin`) as a fresh sandboxed process, reports the
exit code as `status`, and keeps state only in files; on the legacy contract it runs `code` as a
bash command (status Success when the exit code is 0).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hmac
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dynamic_sessions_mcp.local_pool import files
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType
from dynamic_sessions_mcp.local_pool.python_kernel import KernelOutcome, KernelStartError
from dynamic_sessions_mcp.local_pool.sessions import PoolAtCapacity, SessionRegistry
from dynamic_sessions_mcp.local_pool.shell import ShellOutcome, run_shell

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

LEGACY = frozenset({"2024-02-02-preview", "2024-08-02-preview"})
CURRENT = frozenset({"2024-10-02-preview", "2025-02-02-preview", "2025-10-02-preview"})
SESSIONS = frozenset({"2025-02-02-preview", "2025-10-02-preview"})
V2025_10 = frozenset({"2025-10-02-preview"})
ALL_VERSIONS = LEGACY | CURRENT

POOL_NAME = "local"
DEFAULT_STREAM_MAX = 4096  # outputStreamsMaxLength default (2025-10-02-preview)
MAX_JSON_BYTES = 16 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_FIELD_BYTES = 16 * 1024
# TypeSpec models/common.tsp, with the documented 4..128 length.
IDENTIFIER = re.compile(r"""[a-zA-Z0-9_|}{\[\]:"';<>?/.,@#$%^&*()\-+=!~`]{4,128}""")
OPERATION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"x-ms-error-code": code},
    )


def bad_request(message: str, code: str = "BadRequest") -> ApiError:
    return ApiError(400, code, message)


# ---- request bodies ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    code: str | None
    shell_command: str | None
    argv: list[str] | None
    stdin: str | None
    timeout_s: float
    asynchronous: bool
    stream_max: int | None  # truncate stdout/stderr to this many bytes (2025-10-02-preview)


def _optional(body: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise bad_request(f"'{key}' must be {what}", "InvalidRequestBody")
    return value


def _choice(body: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = _optional(body, key, str, "a string")
    if value is None:
        return allowed[0]
    if value.lower() not in allowed:
        raise bad_request(f"'{key}' must be one of {', '.join(allowed)} (any case)", "InvalidRequestBody")
    return str(value.lower())


def _timeout(body: dict[str, Any], config: LocalPoolConfig) -> float:
    value = body.get("timeoutInSeconds")
    if value is None:
        return config.default_timeout_s
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise bad_request("'timeoutInSeconds' must be a positive number", "InvalidRequestBody")
    if value > config.max_timeout_s:
        raise bad_request(
            f"'timeoutInSeconds' is {value}; this pool allows at most {config.max_timeout_s:g}",
            "InvalidRequestBody",
        )
    return float(value)


def _code(body: dict[str, Any], input_type: str) -> str | None:
    code: str | None = _optional(body, "code", str, "a string")
    if code is not None and input_type == "inlinebase64":
        try:
            return base64.b64decode(code, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise bad_request("'code' is not valid base64 UTF-8 text", "InvalidRequestBody") from None
    return code


def parse_current(body: dict[str, Any], version: str, config: LocalPoolConfig) -> RunRequest:
    input_type = _choice(body, "codeInputType", ("inline", "inlinebase64", "inlinetext"))
    execution_type = _choice(body, "executionType", ("synchronous", "asynchronous"))
    stream_max: int | None = None
    if version in V2025_10:
        stream_max = _optional(body, "outputStreamsMaxLength", int, "a positive integer")
        if stream_max is not None and stream_max <= 0:
            raise bad_request("'outputStreamsMaxLength' must be a positive integer", "InvalidRequestBody")
        stream_max = stream_max or DEFAULT_STREAM_MAX
    argv = _optional(body, "execCommandAndArgs", list, "a list of strings")
    if argv is not None and (not argv or not all(isinstance(a, str) for a in argv)):
        raise bad_request("'execCommandAndArgs' must be a non-empty list of strings", "InvalidRequestBody")
    request = RunRequest(
        code=_code(body, input_type),
        shell_command=_optional(body, "shellCommand", str, "a string"),
        argv=argv,
        stdin=_optional(body, "stdin", str, "a string"),
        timeout_s=_timeout(body, config),
        asynchronous=execution_type == "asynchronous",
        stream_max=stream_max,
    )
    _check_for_pool(request, config.pool_type)
    return request


def parse_legacy(body: dict[str, Any], config: LocalPoolConfig) -> RunRequest:
    props = body.get("properties")
    if not isinstance(props, dict):
        raise bad_request("the body must be {'properties': {...}}", "InvalidRequestBody")
    input_type = _choice(props, "codeInputType", ("inline", "inlinebase64", "inlinetext"))
    if _choice(props, "executionType", ("synchronous", "asynchronous")) != "synchronous":
        raise bad_request("only synchronous execution exists on this api-version", "InvalidRequestBody")
    code = _code(props, input_type)
    if code is None:
        raise bad_request("'properties.code' is required", "InvalidRequestBody")
    # Shell pools run the legacy `code` as a bash command.
    shell = config.pool_type is LocalPoolType.SHELL
    return RunRequest(
        code=None if shell else code,
        shell_command=code if shell else None,
        argv=None,
        stdin=None,
        timeout_s=_timeout(props, config),
        asynchronous=False,
        stream_max=None,
    )


def _check_for_pool(request: RunRequest, pool_type: LocalPoolType) -> None:
    shell_fields = [request.shell_command, request.argv, request.stdin]
    if pool_type is LocalPoolType.PYTHON:
        if any(f is not None for f in shell_fields):
            raise bad_request(
                "this is a Python pool: shellCommand, execCommandAndArgs and stdin are for Shell pools; "
                "send Python source in 'code'",
                "InvalidRequestBody",
            )
        if request.code is None:
            raise bad_request("'code' is required", "InvalidRequestBody")
        return
    if request.code is not None:
        raise bad_request(
            "this is a Shell pool: send 'shellCommand' or 'execCommandAndArgs', not 'code'",
            "InvalidRequestBody",
        )
    if (request.shell_command is None) == (request.argv is None):
        raise bad_request("send exactly one of 'shellCommand' and 'execCommandAndArgs'", "InvalidRequestBody")


async def read_json(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ApiError(413, "RequestTooLarge", f"the request body exceeds {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("the request body is not valid JSON", "InvalidJson") from None
    if not isinstance(value, dict):
        raise bad_request("the request body must be a JSON object", "InvalidRequestBody")
    return value


# ---- multipart uploads ------------------------------------------------------------------


class _UploadReceiver:
    """Streams the multipart part named `file` straight into a size-capped staged file; small
    fields are kept (at most MAX_FIELD_BYTES each), everything else is ignored."""

    def __init__(self, registry: SessionRegistry, limit: int) -> None:
        self._registry = registry
        self._limit = limit
        self.staged: files.StagedUpload | None = None
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self._header = bytearray()
        self._value = bytearray()
        self._disposition = b""
        self._field: str | None = None
        self._data = bytearray()
        self._into_file = False
        self.complete = False  # the closing boundary was seen

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition, self._field, self._into_file = b"", None, False
        self._data.clear()

    def _header_end(self) -> None:
        if bytes(self._header).lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            if self.staged is not None:
                raise bad_request("send one file per request", "InvalidMultipart")
            if not options.get(b"filename"):
                raise bad_request("the 'file' part needs a filename", "InvalidMultipart")
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self.staged = files.StagedUpload(self._registry.staging_dir, self._limit)
            self._into_file = True
        else:
            self._field = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._into_file:
            assert self.staged is not None
            self.staged.write(data[start:end])
        elif self._field is not None:
            self._data.extend(data[start:end])
            if len(self._data) > MAX_FIELD_BYTES:
                raise bad_request(f"form field {self._field!r} is too large", "InvalidMultipart")

    def _part_end(self) -> None:
        if self._field is not None and not self._into_file:
            self.fields[self._field] = self._data.decode("utf-8", "replace")

    def _end(self) -> None:
        self.complete = True

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()


async def receive_upload(request: Request, registry: SessionRegistry, limit: int) -> _UploadReceiver:
    """Parse a multipart upload without buffering it: 413 as soon as it passes `limit` (by
    Content-Length up front, and by counting while streaming when that header lies or is absent)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise bad_request("send the file as multipart/form-data (part name 'file')", "InvalidMultipart")
    too_large = ApiError(413, "FileTooLarge", f"the upload exceeds this pool's limit of {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large
    receiver = _UploadReceiver(registry, limit)
    try:
        parser = MultipartParser(params[b"boundary"], receiver.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + MULTIPART_OVERHEAD:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except files.TooLarge:
        receiver.discard()
        raise too_large from None
    except FormParserError as exc:
        receiver.discard()
        raise bad_request(f"malformed multipart body: {exc}", "InvalidMultipart") from None
    except BaseException:
        receiver.discard()
        raise
    if not receiver.complete:
        receiver.discard()
        raise bad_request("the multipart body ended before its closing boundary", "InvalidMultipart")
    if receiver.staged is None or receiver.filename is None:
        raise bad_request("no multipart part named 'file' was sent", "InvalidMultipart")
    return receiver


# ---- routing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    request: Request
    version: str
    identifier: str
    args: list[str]

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    method: str
    pattern: tuple[str, ...]  # literal segments; "{}" one segment; "**" the rest (one or more)
    versions: frozenset[str]
    handler: Handler
    needs_identifier: bool = True

    def match(self, segments: list[str]) -> list[str] | None:
        args: list[str] = []
        for i, part in enumerate(self.pattern):
            if part == "**":
                return [*args, "/".join(segments[i:])] if len(segments) > i else None
            if i >= len(segments) or (part != "{}" and part != segments[i]):
                return None
            if part == "{}":
                args.append(segments[i])
        return args if len(segments) == len(self.pattern) else None


def _segments(request: Request) -> list[str]:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw.decode("latin-1").split("?", 1)[0].strip("/")
    return [unquote(s, errors="strict") for s in path.split("/")] if path else []


@dataclass(frozen=True)
class RunResult:
    """One execution's outcome, before it is shaped for a contract."""

    status: str  # Python: Succeeded|Failed; Shell: the exit code
    succeeded: bool
    stdout: str
    stderr: str
    value: Any  # Python: last expression / image dict / ""; None for Shell
    duration_ms: int
    sandbox_id: str
    error: dict[str, str] | None


def _python_value(outcome: KernelOutcome) -> Any:
    if outcome.has_result:
        return outcome.result
    if outcome.images:
        fmt, data = outcome.images[0]
        return {"type": "image", "format": fmt, "base64_data": data}
    return ""


def _with_note(stderr: str, note: str) -> str:
    """Append a line of our own to the execution's stderr."""
    separator = "\n" if stderr and not stderr.endswith("\n") else ""
    return f"{stderr}{separator}{note}\n"


def _truncate(text: str, limit: int | None) -> str:
    if limit is None:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


class PoolApi:
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.config = registry.config
        self.operations = [
            # legacy contract
            Operation("POST", ("code", "execute"), LEGACY, self.legacy_execute),
            Operation("POST", ("files", "upload"), LEGACY, self.legacy_upload),
            Operation("GET", ("files", "content", "**"), LEGACY, self.legacy_download),
            Operation("GET", ("files",), LEGACY, self.legacy_list),
            # current contract
            Operation("POST", ("executions",), CURRENT, self.execute),
            Operation("GET", ("executions", "{}"), CURRENT, self.get_execution),
            Operation("GET", ("files",), CURRENT, self.list_files),
            Operation("POST", ("files",), CURRENT, self.upload),
            Operation("GET", ("files", "{}"), CURRENT, self.file_metadata),
            Operation("DELETE", ("files", "{}"), CURRENT, self.delete_file),
            Operation("GET", ("files", "{}", "content"), CURRENT, self.download),
            # session management
            Operation("GET", ("session",), SESSIONS, self.get_session),
            Operation("DELETE", ("session",), SESSIONS, self.delete_session),
            Operation("GET", ("listSessions",), SESSIONS, self.list_sessions, needs_identifier=False),
            Operation("GET", ("metadata",), SESSIONS, self.metadata, needs_identifier=False),
            Operation("POST", (".management", "stopSession"), V2025_10, self.stop_session),
        ]

    # ---- dispatch -------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except files.FileOpError as exc:
            return error_response(exc.status, exc.code, str(exc))
        except PoolAtCapacity as exc:
            return error_response(404, "SessionPoolAtCapacity", str(exc))
        except KernelStartError as exc:
            logger.error("could not start a session: %s", exc)
            return error_response(503, "SessionStartFailed", f"could not start a session's sandbox: {exc}")
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(500, "InternalServerError", "the local pool failed; see its log")

    async def _dispatch(self, request: Request) -> Response:
        if not self._authorized(request):
            response = error_response(401, "Unauthorized", "send 'Authorization: Bearer <token>'")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        version = request.query_params.get("api-version")
        if not version:
            raise bad_request("the 'api-version' query parameter is required", "MissingApiVersionParameter")
        if version not in ALL_VERSIONS:
            raise bad_request(
                f"api-version {version!r} is not supported; use one of {', '.join(sorted(ALL_VERSIONS))}",
                "UnsupportedApiVersion",
            )
        try:
            segments = _segments(request)
        except UnicodeDecodeError:
            raise bad_request("the path is not valid UTF-8", "InvalidPath") from None
        routes = [(op, args) for op in self.operations if (args := op.match(segments)) is not None]
        routes = [(op, args) for op, args in routes if version in op.versions]
        if not routes:
            raise ApiError(404, "NotFound", f"no such operation on api-version {version}")
        chosen = next(((op, args) for op, args in routes if op.method == request.method), None)
        if chosen is None:
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed here")
        op, args = chosen
        identifier = ""
        if op.needs_identifier:
            identifier = request.query_params.get("identifier", "")
            if not IDENTIFIER.fullmatch(identifier):
                raise bad_request(
                    "the 'identifier' query parameter is required: 4 to 128 letters, digits or "
                    "punctuation from the documented set",
                    "InvalidSessionIdentifier",
                )
        return await op.handler(Call(request, version, identifier, args))

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        expected = self.config.token
        return expected is None or hmac.compare_digest(token.encode(), expected.encode())

    # ---- executions -------------------------------------------------------------------------

    async def run(self, identifier: str, request: RunRequest) -> RunResult:
        """One execution in `identifier`'s session (REST routes and the MCP emulation)."""
        async with self.registry.exclusive(identifier) as session:
            if session.kernel is not None:
                assert request.code is not None
                outcome = await session.kernel.execute(request.code, request.timeout_s)
                if outcome.status in ("timeout", "died") or not session.kernel.alive:
                    await self.registry.discard(session)
                return self._python_result(outcome, request, session.sandbox_id)
            shell = await run_shell(
                self.registry.sandbox_or_fail(),
                session.directory,
                command=request.shell_command,
                argv=request.argv,
                stdin=request.stdin,
                timeout_s=request.timeout_s,
            )
            return self._shell_result(shell, request, session.sandbox_id)

    @staticmethod
    def _python_result(outcome: KernelOutcome, request: RunRequest, sandbox_id: str) -> RunResult:
        stderr, error = outcome.stderr, None
        if outcome.status == "timeout":
            message = (
                f"execution exceeded its timeout of {request.timeout_s:g} s and was stopped; the session "
                "was reset (variables and files are gone)"
            )
            stderr, error = _with_note(stderr, message), {"code": "ExecutionTimedOut", "message": message}
        elif outcome.status == "died":
            message = outcome.message or "the session's kernel died; the session was reset"
            stderr, error = _with_note(stderr, message), {"code": "SessionTerminated", "message": message}
        ok = outcome.status == "ok"
        return RunResult(
            status="Succeeded" if ok else "Failed",
            succeeded=ok,
            stdout=outcome.stdout,
            stderr=stderr,
            value=_python_value(outcome),
            duration_ms=outcome.duration_ms,
            sandbox_id=sandbox_id,
            error=error,
        )

    @staticmethod
    def _shell_result(outcome: ShellOutcome, request: RunRequest, sandbox_id: str) -> RunResult:
        stderr, error = outcome.stderr, None
        if outcome.timed_out:
            message = f"the command exceeded its timeout of {request.timeout_s:g} s and was killed"
            stderr, error = _with_note(stderr, message), {"code": "ExecutionTimedOut", "message": message}
        return RunResult(
            status=str(outcome.exit_code),
            succeeded=outcome.exit_code == 0,
            stdout=outcome.stdout,
            stderr=stderr,
            value=None,
            duration_ms=outcome.duration_ms,
            sandbox_id=sandbox_id,
            error=error,
        )

    @staticmethod
    def _resource(
        execution_id: str, identifier: str, asynchronous: bool, result: RunResult, stream_max: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stdout": _truncate(result.stdout, stream_max),
            "stderr": _truncate(result.stderr, stream_max),
        }
        if result.value is not None:
            body["executionResult"] = result.value
        body["executionTimeInMilliseconds"] = result.duration_ms
        resource: dict[str, Any] = {
            "id": execution_id,
            "identifier": identifier,
            "executionType": "Asynchronous" if asynchronous else "Synchronous",
            "status": result.status,
            "result": body,
        }
        if result.error is not None:
            resource["error"] = result.error
        return resource

    async def execute(self, call: Call) -> Response:
        request = parse_current(await read_json(call.request), call.version, self.config)
        execution_id = call.request.headers.get("operation-id") or str(uuid.uuid4())
        if not OPERATION_ID.fullmatch(execution_id):
            raise bad_request("'operation-id' must be 1 to 128 of A-Z a-z 0-9 . _ -", "InvalidOperationId")
        location = f"executions/{quote(execution_id, safe='')}?" + urlencode(
            {"api-version": call.version, "identifier": call.identifier}
        )
        headers = {"operation-id": execution_id, "Operation-Location": location}
        if request.asynchronous:
            session = await self.registry.acquire(call.identifier)
            resource: dict[str, Any] = {
                "id": execution_id,
                "identifier": call.identifier,
                "executionType": "Asynchronous",
                "status": "Running",
            }
            self.registry.record_execution(call.identifier, resource)
            self.registry.spawn(self._run_in_background(call.identifier, request, resource))
            return JSONResponse(dict(resource), headers={**headers, "X-Ms-Session-Guid": session.sandbox_id})
        result = await self.run(call.identifier, request)
        resource = self._resource(execution_id, call.identifier, False, result, request.stream_max)
        self.registry.record_execution(call.identifier, resource)
        return JSONResponse(resource, headers={**headers, "X-Ms-Session-Guid": result.sandbox_id})

    async def _run_in_background(
        self, identifier: str, request: RunRequest, resource: dict[str, Any]
    ) -> None:
        try:
            result = await self.run(identifier, request)
        except PoolAtCapacity as exc:
            resource.update(status="Failed", error={"code": "SessionPoolAtCapacity", "message": str(exc)})
        except Exception:
            logger.exception("asynchronous execution %s failed", resource["id"])
            message = "the local pool failed to run this execution; see its log"
            resource.update(status="Failed", error={"code": "InternalServerError", "message": message})
        else:
            resource.update(self._resource(resource["id"], identifier, True, result, request.stream_max))

    async def get_execution(self, call: Call) -> Response:
        self.registry.get(call.identifier)  # a call on the session: resets its idle timer
        resource = self.registry.find_execution(call.identifier, call.args[0])
        if resource is None:
            raise ApiError(404, "ExecutionNotFound", f"no execution {call.args[0]!r} in this session")
        return JSONResponse(dict(resource))

    async def legacy_execute(self, call: Call) -> Response:
        request = parse_legacy(await read_json(call.request), self.config)
        result = await self.run(call.identifier, request)
        body = {
            "$id": "1",
            "properties": {
                "$id": "2",
                "status": "Success" if result.succeeded else "Failure",
                "stdout": result.stdout,
                "stderr": result.stderr,
                "result": "" if result.value is None else result.value,
                "executionTimeInMilliseconds": result.duration_ms,
            },
        }
        headers = {"operation-id": str(uuid.uuid4()), "X-Ms-Session-Guid": result.sandbox_id}
        return JSONResponse(body, headers=headers)

    # ---- files: current contract ----------------------------------------------------------

    def _file_resource(self, entry: files.FileEntry, call: Call) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "name": entry.name,
            "type": "Directory" if entry.is_dir else "File",
            "contentType": entry.content_type,
            "sizeInBytes": entry.size,
            "lastModifiedAt": entry.modified,
        }
        if call.version in V2025_10:
            resource["directory"] = entry.directory
        return resource

    async def list_files(self, call: Call) -> Response:
        parts = files.parse_dir(call.query("path"))
        recursive = False
        if call.version in V2025_10 and call.query("recursive") is not None:
            flag = (call.query("recursive") or "").lower()
            if flag not in ("true", "false"):
                raise bad_request("'recursive' must be true or false", "InvalidQueryParameter")
            recursive = flag == "true"
        session = await self.registry.acquire(call.identifier)
        entries = await anyio.to_thread.run_sync(
            lambda: files.list_dir(session.directory, parts, recursive=recursive)
        )
        return JSONResponse({"value": [self._file_resource(e, call) for e in entries], "nextLink": None})

    async def _receive(self, call: Call) -> files.FileEntry:
        """Receive a multipart upload and move it into place; `path` (query or form field) names
        the folder, and the part's filename may add folders of its own."""
        query_path = call.query("path")
        base = files.parse_dir(query_path)
        session = await self.registry.acquire(call.identifier)
        receiver = await receive_upload(call.request, self.registry, self.config.max_upload_bytes)
        try:
            assert receiver.filename is not None and receiver.staged is not None
            if query_path is None and "path" in receiver.fields:
                base = files.parse_dir(receiver.fields["path"])
            if receiver.filename.startswith("/"):
                base = ()
            sub, name = files.parse_file_path(receiver.filename)
            staged = receiver.staged
            entry = await anyio.to_thread.run_sync(lambda: staged.commit(session.directory, base + sub, name))
        finally:
            receiver.discard()
        session.touch()  # a long upload counts as activity until its end
        return entry

    async def upload(self, call: Call) -> Response:
        entry = await self._receive(call)
        return JSONResponse(self._file_resource(entry, call))

    async def file_metadata(self, call: Call) -> Response:
        parts, name = files.parse_dir(call.query("path")), files.parse_name(call.args[0])
        session = await self.registry.acquire(call.identifier)
        entry = await anyio.to_thread.run_sync(lambda: files.describe(session.directory, parts, name))
        return JSONResponse(self._file_resource(entry, call))

    async def delete_file(self, call: Call) -> Response:
        parts, name = files.parse_dir(call.query("path")), files.parse_name(call.args[0])
        session = await self.registry.acquire(call.identifier)
        await anyio.to_thread.run_sync(lambda: files.delete(session.directory, parts, name))
        return Response(status_code=204)

    async def _stream(self, identifier: str, parts: tuple[str, ...], name: str) -> Response:
        session = await self.registry.acquire(identifier)
        opened = await anyio.to_thread.run_sync(lambda: files.open_file(session.directory, parts, name))
        headers = {
            "Content-Length": str(opened.size),
            "Last-Modified": email.utils.formatdate(opened.mtime, usegmt=True),
        }
        return StreamingResponse(opened.chunks(), media_type=files.content_type(name), headers=headers)

    async def download(self, call: Call) -> Response:
        parts, name = files.parse_dir(call.query("path")), files.parse_name(call.args[0])
        return await self._stream(call.identifier, parts, name)

    # ---- files: legacy contract -----------------------------------------------------------

    async def legacy_upload(self, call: Call) -> Response:
        entry = await self._receive(call)
        return JSONResponse({"$id": "1", "value": [self._legacy_file(entry, 2)]})

    async def legacy_download(self, call: Call) -> Response:
        parts, name = files.parse_file_path(call.args[0])
        return await self._stream(call.identifier, parts, name)

    async def legacy_list(self, call: Call) -> Response:
        session = await self.registry.acquire(call.identifier)
        entries = await anyio.to_thread.run_sync(lambda: files.list_dir(session.directory, ()))
        regular = [e for e in entries if not e.is_dir]
        return JSONResponse(
            {"$id": "1", "value": [self._legacy_file(e, 2 + 2 * i) for i, e in enumerate(regular)]}
        )

    @staticmethod
    def _legacy_file(entry: files.FileEntry, ref: int) -> dict[str, Any]:
        path = f"{entry.directory}/{entry.name}" if entry.directory else entry.name
        return {
            "$id": str(ref),
            "properties": {
                "$id": str(ref + 1),
                "filename": path,
                "size": entry.size,
                "lastModifiedTime": entry.modified,
            },
        }

    # ---- sessions and pool --------------------------------------------------------------------

    def _session_body(self, identifier: str) -> dict[str, Any]:
        session = self.registry.get(identifier)
        if session is None:
            raise ApiError(404, "SessionNotFound", "no live session with this identifier")
        return {
            "identifier": session.identifier,
            "createdAt": files.iso_utc(session.created_at),
            "lastAccessedAt": files.iso_utc(session.last_accessed_at),
            "expireAt": files.iso_utc(self.registry.expire_at(session)),
            "etag": session.sandbox_id,
        }

    async def get_session(self, call: Call) -> Response:
        return JSONResponse(self._session_body(call.identifier))

    async def delete_session(self, call: Call) -> Response:
        if not await self.registry.delete(call.identifier):
            raise ApiError(404, "SessionNotFound", "no live session with this identifier")
        return Response(status_code=204)

    async def stop_session(self, call: Call) -> Response:
        if not await self.registry.delete(call.identifier):
            raise ApiError(404, "SessionNotFound", "no live session with this identifier")
        return JSONResponse(f"Session {call.identifier} in session pool {POOL_NAME} stopped.")

    async def list_sessions(self, call: Call) -> Response:
        skip_text = call.query("skip") or "0"
        if not skip_text.isdigit():
            raise bad_request("'skip' must be a non-negative integer", "InvalidQueryParameter")
        sessions = sorted(self.registry.sessions(), key=lambda s: s.created_at)[int(skip_text) :]
        return JSONResponse(
            {
                "sessions": [
                    {
                        "identifier": s.identifier,
                        "createdAt": files.iso_utc(s.created_at),
                        "lastAccessedAt": files.iso_utc(s.last_accessed_at),
                        "expireAt": files.iso_utc(self.registry.expire_at(s)),
                        "etag": s.sandbox_id,
                    }
                    for s in sessions
                ]
            }
        )

    async def metadata(self, call: Call) -> Response:
        facts = self.registry.facts_or_fail()
        kernel: dict[str, str] | None = None
        if self.config.pool_type is LocalPoolType.PYTHON:
            versions = {p["name"].lower(): p["version"] for p in facts.packages}
            kernel = {
                "name": "python3",
                "version": versions.get("ipykernel", ""),
                "projectUrl": "https://github.com/ipython/ipykernel",
                "description": "IPython Kernel for Jupyter",
            }
        started = files.iso_utc(facts.started_at)
        return JSONResponse(
            {
                "runtimes": facts.runtimes,
                "preInstalledPackages": facts.packages,
                "createdAt": started,
                "lastUpdatedAt": started,
                "jupyterKernel": kernel,
                "poolType": self.config.pool_type.value,
                "isolation": self.registry.isolation,
                "readySessions": self.registry.ready_kernels,
            }
        )


_METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]


def build_app(registry: SessionRegistry, *, manage_registry: bool) -> Starlette:
    """The Starlette app over `registry`; with `manage_registry` its lifespan starts and stops it."""
    api = PoolApi(registry)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if manage_registry:
            await registry.start()
        try:
            yield
        finally:
            if manage_registry:
                await registry.stop()

    routes = [Route("/{path:path}", api.dispatch, methods=_METHODS)]
    if registry.config.mcp_api_key:
        # Imported here: the emulation builds on this module's run path.
        from dynamic_sessions_mcp.local_pool.mcp_emulation import McpEmulation

        emulation = McpEmulation(api, registry.config.mcp_api_key)
        routes.insert(0, Route("/mcp", emulation.handle, methods=_METHODS))
    return Starlette(routes=routes, lifespan=lifespan)


def create_app(config: LocalPoolConfig) -> Starlette:
    """The local pool as an ASGI app; its lifespan starts the sandboxes and stops them all."""
    return build_app(SessionRegistry(config), manage_registry=True)
