"""The Azure dynamic sessions REST data plane as a `Pool`: legacy and current contracts, Python and
Shell pools, over one shared `httpx.AsyncClient`.

Contracts (see shared/reference/dynamic-sessions-api.md): legacy api-versions (2024-02/2024-08) use
`code/execute` with a `properties` envelope and `files/upload`/`files/content/{name}`; current ones
(2024-10 and later) use `executions` with a flat body and `files?path=dir` + `files/{name}[/content]`.
URLs are built by appending encoded segments to the endpoint, never by resolving a path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import re
import secrets
import shlex
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

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
from dynamic_sessions_mcp.pools.pool_http import (
    Call,
    backoff_s,
    not_found,
    retry_after_s,
    status_error,
    transport_error,
    truncate,
)

logger = logging.getLogger(__name__)

DEFAULT_API_VERSION = "2025-10-02-preview"
KNOWN_API_VERSIONS = (
    "2024-02-02-preview",
    "2024-08-02-preview",
    "2024-10-02-preview",
    "2025-02-02-preview",
    "2025-10-02-preview",
)
# langchain deletes sessions with this version whatever it uses otherwise; legacy pools accept it.
SESSION_DELETE_API_VERSION = "2025-10-02-preview"
# The pool's default cuts each stream at 4096 bytes without saying so; the bridge asks for its spill
# limit instead (DSMCP_OUTPUT_SPILL_MAX_BYTES) and cuts for the model itself (outputs.py).
OUTPUT_STREAMS_MAX_LENGTH = 16 * 1024 * 1024
DEFAULT_STREAMS_MAX_LENGTH = 4096  # what current-contract pools cut at when not asked otherwise
_RUNNING = frozenset({"running", "notstarted"})
# Longer Python code goes to a Shell pool on stdin: one argv string is capped at 128 KiB by Linux.
MAX_ARGV_CODE_BYTES = 64 * 1024

_CONNECT_TIMEOUT_S = 10.0
_DEFAULT_READ_TIMEOUT_S = 30.0
_UPLOAD_WRITE_TIMEOUT_S = 120.0
_DELETE_TIMEOUT_S = 60.0
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class _Contract:
    """What a given api-version offers; versions compare by their date prefix."""

    api_version: str

    @property
    def _date(self) -> str:
        return self.api_version[:10]

    @property
    def legacy(self) -> bool:
        return self._date < "2024-10-02"

    @property
    def has_metadata(self) -> bool:
        return self._date >= "2025-02-02"

    @property
    def has_2025_10_fields(self) -> bool:
        """`outputStreamsMaxLength`, `execCommandAndArgs`, `stdin` and `recursive`."""
        return self._date >= "2025-10-02"


def _segment(value: str) -> str:
    return quote(value, safe="")


def _split_file_path(path: str) -> tuple[str, str]:
    directory, _, name = path.strip("/").rpartition("/")
    if not name:
        raise PoolError(PoolErrorKind.BAD_REQUEST, "A file path under /mnt/data is required, not a folder.")
    return directory, name


def _relative(path: str) -> str:
    """A pool-reported path as a path relative to /mnt/data."""
    if path == "/mnt/data" or path.startswith("/mnt/data/"):
        path = path[len("/mnt/data") :]
    return path.strip("/")


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


class RestPool:
    """A session pool reached over its REST data plane (Azure, or the local pool)."""

    def __init__(
        self,
        *,
        endpoint: str,
        api_version: str,
        pool_type: PoolType,
        http: httpx.AsyncClient,
        auth: httpx.Auth | None,
        execution_margin_s: float,
        retry_budget_s: float,
        output_streams_max_length: int = OUTPUT_STREAMS_MAX_LENGTH,
    ) -> None:
        self._endpoint = endpoint
        self._contract = _Contract(api_version)
        self._streams_max_length = output_streams_max_length
        self._pool_type = pool_type
        self._http = http
        self._auth = auth
        self._execution_margin_s = execution_margin_s
        self._retry_budget_s = retry_budget_s
        # Ordinary calls use the shared client's timeout (the operator's setting) when it has one.
        client_timeout = http.timeout
        self._timeout = (
            client_timeout
            if client_timeout.read is not None and client_timeout.connect is not None
            else httpx.Timeout(_DEFAULT_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
        )

    @property
    def pool_type(self) -> PoolType:
        return self._pool_type

    # ---- Pool protocol ----------------------------------------------------------------------

    async def describe(self) -> PoolInfo:
        runtimes: dict[str, str] = {}
        packages: dict[str, str] = {}
        if self._contract.has_metadata:
            metadata = await self.metadata()
            runtimes = _name_versions(metadata.get("runtimes"))
            packages = _name_versions(metadata.get("preInstalledPackages"))
        return PoolInfo(
            pool_type=self._pool_type,
            api_version=self._contract.api_version,
            endpoint=self._endpoint,
            runtimes=runtimes,
            packages=packages,
        )

    async def run_python(self, identifier: str, code: str, timeout_s: float) -> Execution:
        return await self._run_sync(identifier, ExecutionKind.PYTHON, code, timeout_s)

    async def run_shell(self, identifier: str, command: str, timeout_s: float) -> Execution:
        return await self._run_sync(identifier, ExecutionKind.SHELL, command, timeout_s)

    @property
    def supports_background(self) -> bool:
        return not self._contract.legacy

    async def start_execution(
        self, identifier: str, kind: ExecutionKind, source: str, timeout_s: float, execution_id: str
    ) -> str | None:
        if self._contract.legacy:
            raise PoolError(
                PoolErrorKind.CONFIG,
                f"Asynchronous executions need api-version 2024-10-02-preview or later "
                f"(configured: {self._contract.api_version}).",
            )
        body = {**self._execution_body(kind, source, timeout_s), "executionType": "Asynchronous"}
        call = Call(
            "POST",
            "executions",
            self._query(identifier),
            self._timeout,
            idempotent=False,
            json=body,
            headers={"operation-id": execution_id},
            is_execution=True,
        )
        response = await self._send(call)
        echoed = _json_object(response).get("id")
        if echoed and echoed != execution_id:
            logger.warning("the pool ignored the operation-id of an asynchronous execution")
        sandbox_id: str | None = response.headers.get("x-ms-session-guid")
        return sandbox_id

    async def get_execution(
        self, identifier: str, kind: ExecutionKind, execution_id: str
    ) -> Execution | None:
        call = Call(
            "GET",
            f"executions/{_segment(execution_id)}",
            self._query(identifier),
            self._timeout,
            idempotent=True,
            execution_id=execution_id,
        )
        return self._finished(await self._send(call), kind)

    async def upload(self, identifier: str, path: str, data: bytes) -> FileInfo:
        directory, name = _split_file_path(path)
        timeout = self._upload_timeout()
        if self._contract.legacy:
            call = Call(
                "POST",
                "files/upload",
                self._query(identifier),
                timeout,
                idempotent=False,
                # An absolute filename places nested files (as Semantic Kernel sends it).
                files={"file": (f"/mnt/data/{path}", data, "application/octet-stream")},
            )
            return _uploaded(_json_object(await self._send(call)), path, len(data), legacy=True)
        call = Call(
            "POST",
            "files",
            self._query(identifier, path=directory),
            timeout,
            idempotent=False,
            files={"file": (name, data, "application/octet-stream")},
        )
        return _uploaded(_json_object(await self._send(call)), path, len(data), legacy=False)

    async def upload_stream(
        self, identifier: str, path: str, chunks: AsyncIterable[bytes], size: int | None
    ) -> FileInfo:
        directory, name = _split_file_path(path)
        if self._contract.legacy:
            url_path, query, filename = "files/upload", self._query(identifier), f"/mnt/data/{path}"
        else:
            url_path, query, filename = "files", self._query(identifier, path=directory), name
        boundary = secrets.token_hex(16)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{_form_quote(filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def body() -> AsyncIterator[bytes]:
            yield head
            async for chunk in chunks:
                yield chunk
            yield tail

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if size is not None:
            headers["Content-Length"] = str(len(head) + size + len(tail))
        call = Call(
            "POST",
            url_path,
            query,
            self._upload_timeout(),
            idempotent=False,
            content=body(),
            headers=headers,
        )
        payload = _json_object(await self._send(call))
        return _uploaded(payload, path, size or 0, legacy=self._contract.legacy)

    async def open_download(self, identifier: str, path: str) -> FileStream:
        call = replace(self._download_call(identifier, path), stream=True)
        response = await self._send(call)
        length = response.headers.get("content-length", "")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_bytes():
                    yield chunk
            except httpx.RequestError as exc:
                raise transport_error(exc, call) from exc

        return FileStream(
            content_type=response.headers.get("content-type"),
            size=int(length) if length.isdigit() else None,
            chunks=chunks(),
            close=response.aclose,
        )

    async def download(self, identifier: str, path: str) -> Download:
        response = await self._send(self._download_call(identifier, path))
        return Download(data=response.content, content_type=response.headers.get("content-type"))

    def _download_call(self, identifier: str, path: str) -> Call:
        if self._contract.legacy:
            encoded = "/".join(_segment(part) for part in path.strip("/").split("/"))
            return Call(
                "GET",
                f"files/content/{encoded}",
                self._query(identifier),
                self._timeout,
                idempotent=True,
                file_path=path,
            )
        directory, name = _split_file_path(path)
        return Call(
            "GET",
            f"files/{_segment(name)}/content",
            self._query(identifier, path=directory),
            self._timeout,
            idempotent=True,
            file_path=path,
        )

    async def list_files(self, identifier: str, path: str, recursive: bool) -> list[FileInfo]:
        directory = path.strip("/")
        if self._contract.legacy:
            return await self._list_legacy(identifier, directory, recursive)
        if recursive and not self._contract.has_2025_10_fields:
            return await self._walk(identifier, directory)
        return await self._list_current(identifier, directory, recursive)

    async def delete_file(self, identifier: str, path: str) -> None:
        if self._contract.legacy:
            # The legacy contract has no delete verb on platform pools: remove it from inside.
            execution = await self._run_sync(
                identifier, ExecutionKind.PYTHON, _delete_via_python(path), _DELETE_TIMEOUT_S
            )
            outcome = str(execution.result).strip("'\"")
            if outcome == "missing":
                raise not_found(path)
            if not execution.succeeded or outcome != "deleted":
                raise PoolError(
                    PoolErrorKind.SERVER,
                    f"Could not delete /mnt/data/{path}: {truncate(execution.stderr or 'unknown error')}",
                )
            return
        directory, name = _split_file_path(path)
        call = Call(
            "DELETE",
            f"files/{_segment(name)}",
            self._query(identifier, path=directory),
            self._timeout,
            idempotent=True,
            file_path=path,
        )
        await self._send(call)

    async def end_session(self, identifier: str) -> None:
        query = {"api-version": SESSION_DELETE_API_VERSION, "identifier": identifier}
        call = Call("DELETE", "session", query, self._timeout, idempotent=True)
        try:
            await self._send(call)
        except PoolError as exc:
            if exc.status != 404:  # 404: the session is already gone, which is what we wanted
                raise

    # ---- pool metadata ----------------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """`GET metadata` (2025-02-02-preview and later): runtimes, packages, kernel."""
        query = {"api-version": self._contract.api_version}
        call = Call("GET", "metadata", query, self._timeout, idempotent=True)
        return _json_object(await self._send(call))

    # ---- executions -------------------------------------------------------------------------

    def _upload_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=_CONNECT_TIMEOUT_S,
            read=_DEFAULT_READ_TIMEOUT_S * 2,
            write=_UPLOAD_WRITE_TIMEOUT_S,
            pool=_DEFAULT_READ_TIMEOUT_S,
        )

    async def _run_sync(
        self, identifier: str, kind: ExecutionKind, source: str, timeout_s: float
    ) -> Execution:
        if self._contract.legacy:  # legacy pools are Python pools (connect_rest_pool checks)
            code = source if kind is ExecutionKind.PYTHON else _shell_via_python(source)
            body: dict[str, Any] = {
                "properties": {
                    "codeInputType": "inline",
                    "executionType": "synchronous",
                    "code": code,
                    "timeoutInSeconds": max(1, math.ceil(timeout_s)),
                }
            }
            path = "code/execute"
        else:
            body = {**self._execution_body(kind, source, timeout_s), "executionType": "Synchronous"}
            path = "executions"
        response = await self._post_execution(identifier, path, body, timeout_s)
        return self._outcome(response, kind)

    def _execution_body(self, kind: ExecutionKind, source: str, timeout_s: float) -> dict[str, Any]:
        """The current-contract body (without `executionType`) for `kind` on this pool type."""
        body: dict[str, Any]
        if self._pool_type is PoolType.PYTHON:
            code = source if kind is ExecutionKind.PYTHON else _shell_via_python(source)
            body = {"codeInputType": "Inline", "code": code}
        elif kind is ExecutionKind.SHELL:
            body = {"shellCommand": source}
        elif self._contract.has_2025_10_fields:
            if len(source.encode("utf-8", "surrogatepass")) <= MAX_ARGV_CODE_BYTES:
                body = {"execCommandAndArgs": ["python3", "-c", source]}
            else:
                body = {"execCommandAndArgs": ["python3", "-"], "stdin": source}
        else:
            # 2024-10 / 2025-02 Shell pools take only `shellCommand` (as langchain sends it).
            body = {"shellCommand": f"python3 -c {shlex.quote(source)}"}
        body["timeoutInSeconds"] = max(1, math.ceil(timeout_s))
        if self._contract.has_2025_10_fields:
            body["outputStreamsMaxLength"] = self._streams_max_length
        return body

    def _finished(self, response: httpx.Response, kind: ExecutionKind) -> Execution | None:
        """The outcome of an asynchronous execution, or None while the pool still runs it."""
        status = str(_json_object(response).get("status") or "").lower()
        return None if status in _RUNNING else self._outcome(response, kind)

    def _outcome(self, response: httpx.Response, kind: ExecutionKind) -> Execution:
        shell_pool = self._pool_type is PoolType.SHELL
        execution = _parse_execution(response, legacy=self._contract.legacy, status_is_exit_code=shell_pool)
        cap = self._stream_cap
        # The pool cuts at a byte count (possibly mid-character): near the cap means it may have cut.
        if cap is not None and any(
            len(text.encode("utf-8", "surrogatepass")) >= cap - 3
            for text in (execution.stdout, execution.stderr)
        ):
            execution = replace(execution, streams_cut_at=cap)
        if kind is ExecutionKind.SHELL and not shell_pool:
            # The command ran through the kernel's subprocess: its exit code is the result value.
            exit_code = _as_int(execution.result)
            execution = replace(
                execution,
                succeeded=execution.succeeded and exit_code == 0,
                exit_code=exit_code,
                result=None,
                images=[],
            )
        return execution

    @property
    def _stream_cap(self) -> int | None:
        """Where the pool cuts stdout/stderr: what we asked for, its documented default, or unknown."""
        if self._contract.has_2025_10_fields:
            return self._streams_max_length
        return None if self._contract.legacy else DEFAULT_STREAMS_MAX_LENGTH

    async def _post_execution(
        self, identifier: str, path: str, body: dict[str, Any], timeout_s: float
    ) -> httpx.Response:
        read_s = timeout_s + self._execution_margin_s
        timeout = httpx.Timeout(connect=_CONNECT_TIMEOUT_S, read=read_s, write=read_s, pool=read_s)
        call = Call(
            "POST", path, self._query(identifier), timeout, idempotent=False, json=body, is_execution=True
        )
        return await self._send(call)

    # ---- file listing -----------------------------------------------------------------------

    async def _list_current(self, identifier: str, directory: str, recursive: bool) -> list[FileInfo]:
        extra = {"recursive": "true"} if recursive else {}
        call = Call(
            "GET",
            "files",
            self._query(identifier, path=directory, **extra),
            self._timeout,
            idempotent=True,
            file_path=directory or None,  # a 404 on /mnt/data itself is the capacity answer
        )
        payload = _json_object(await self._send(call))
        return [_current_file_info(item, parent=directory) for item in _items(payload.get("value"))]

    async def _walk(self, identifier: str, directory: str) -> list[FileInfo]:
        """A recursive listing for versions without `recursive`: list each folder in turn."""
        found: list[FileInfo] = []
        pending = [directory]
        while pending:
            entries = await self._list_current(identifier, pending.pop(), recursive=False)
            found.extend(entries)
            pending.extend(entry.path for entry in entries if entry.is_dir)
        return found

    async def _list_legacy(self, identifier: str, directory: str, recursive: bool) -> list[FileInfo]:
        call = Call("GET", "files", self._query(identifier), self._timeout, idempotent=True)
        payload = _json_object(await self._send(call))
        prefix = f"{directory}/" if directory else ""
        found: list[FileInfo] = []
        folders: set[str] = set()
        for item in _items(payload.get("value")):
            info = _legacy_file_info(item)
            if not info.path.startswith(prefix):
                continue
            rest = info.path[len(prefix) :]
            if recursive or "/" not in rest:
                found.append(info)
            else:  # a file deeper down: show its top folder, as a directory listing would
                folders.add(prefix + rest.split("/", 1)[0])
        found.extend(FileInfo(path=folder, size=0, is_dir=True) for folder in sorted(folders))
        return found

    # ---- HTTP -------------------------------------------------------------------------------

    def _query(self, identifier: str, *, path: str = "", **extra: str) -> dict[str, str]:
        query = {"api-version": self._contract.api_version, "identifier": identifier}
        if path:
            query["path"] = path
        query.update(extra)
        return query

    async def _send(self, call: Call) -> httpx.Response:
        """Send `call`, retrying only where that cannot run anything twice; 2xx or PoolError."""
        deadline = time.monotonic() + self._retry_budget_s
        attempt = 0
        while True:
            try:
                response = await self._send_once(call)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the pool. Executions retry only a refused/unreachable connect;
                # a streamed body cannot be sent twice.
                retryable = call.idempotent or (isinstance(exc, httpx.ConnectError) and call.content is None)
                delay = backoff_s(attempt)
                if not retryable or time.monotonic() + delay > deadline:
                    raise transport_error(exc, call) from exc
            except httpx.RequestError as exc:
                raise transport_error(exc, call) from exc
            else:
                if response.is_success:
                    return response
                if call.stream:
                    await response.aread()
                    await response.aclose()
                retry_after = retry_after_s(response)
                delay = retry_after if retry_after is not None else backoff_s(attempt)
                if (
                    not call.idempotent
                    or response.status_code not in (429, 503)
                    or time.monotonic() + delay > deadline
                ):
                    raise status_error(response, call, self._contract.api_version)
            logger.debug("retrying %s %s in %.2f s (attempt %d)", call.method, call.path, delay, attempt + 2)
            await asyncio.sleep(delay)
            attempt += 1

    async def _send_once(self, call: Call) -> httpx.Response:
        url = f"{self._endpoint}/{call.path}?{urlencode(call.query, quote_via=quote, safe='')}"
        request = self._http.build_request(
            call.method,
            url,
            json=call.json,
            files=call.files,
            content=call.content,
            headers=call.headers,
            timeout=call.timeout,
        )
        started = time.monotonic()
        try:
            response = await self._http.send(
                request,
                auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
                stream=call.stream,
            )
        except httpx.HTTPError as exc:
            logger.debug(
                "%s %s failed after %.0f ms: %s",
                call.method,
                call.path,
                (time.monotonic() - started) * 1000,
                type(exc).__name__,
            )
            raise
        logger.debug(
            "%s %s -> %d in %.0f ms",
            call.method,
            call.path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response


async def connect_rest_pool(
    *,
    endpoint: str,
    api_version: str,
    pool_type: PoolType | None,
    http: httpx.AsyncClient,
    auth: httpx.Auth | None,
    execution_margin_s: float = 30.0,
    retry_budget_s: float = 20.0,
    output_streams_max_length: int = OUTPUT_STREAMS_MAX_LENGTH,
) -> RestPool:
    """Check the configuration, detect the pool type from `GET metadata` if not given."""
    endpoint = endpoint.strip()
    if endpoint.endswith("/"):
        endpoint = endpoint[:-1]
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise PoolError(
            PoolErrorKind.CONFIG,
            "The pool endpoint must be an http(s) URL without query or fragment: set DSMCP_POOL_ENDPOINT "
            "to the pool's poolManagementEndpoint.",
        )
    if not _DATE_RE.match(api_version) or api_version[:10] < KNOWN_API_VERSIONS[0][:10]:
        raise PoolError(
            PoolErrorKind.CONFIG,
            f"Unsupported pool api-version {api_version!r}; use one of {', '.join(KNOWN_API_VERSIONS)}.",
        )
    contract = _Contract(api_version)

    def build(kind: PoolType) -> RestPool:
        return RestPool(
            endpoint=endpoint,
            api_version=api_version,
            pool_type=kind,
            http=http,
            auth=auth,
            execution_margin_s=execution_margin_s,
            retry_budget_s=retry_budget_s,
            output_streams_max_length=output_streams_max_length,
        )

    if pool_type is None:
        if not contract.has_metadata:
            raise PoolError(
                PoolErrorKind.CONFIG,
                f"Cannot detect the pool type with api-version {api_version} (pool metadata needs "
                "2025-02-02-preview or later); set DSMCP_POOL_TYPE to python or shell.",
            )
        try:
            metadata = await build(PoolType.PYTHON).metadata()
        except PoolError as exc:
            if exc.status != 404:
                raise
            metadata = {}
        pool_type = _pool_type_from_metadata(metadata)
    if pool_type is PoolType.SHELL and contract.legacy:
        raise PoolError(
            PoolErrorKind.CONFIG,
            f"Shell pools need api-version 2024-10-02-preview or later (configured: {api_version}); "
            f"set DSMCP_POOL_API_VERSION to {DEFAULT_API_VERSION}.",
        )
    return build(pool_type)


def _pool_type_from_metadata(metadata: Mapping[str, Any]) -> PoolType:
    declared = str(metadata.get("poolType") or metadata.get("containerType") or "").lower()
    if declared in ("python", "pythonlts"):
        return PoolType.PYTHON
    if declared == "shell":
        return PoolType.SHELL
    kernel = metadata.get("jupyterKernel")
    kernel_name = str(kernel.get("name") or "").lower() if isinstance(kernel, dict) else ""
    runtimes = set(_name_versions(metadata.get("runtimes")))
    runtime_names = {name.lower() for name in runtimes}
    if "python" in kernel_name or "python" in runtime_names:
        return PoolType.PYTHON
    if not kernel_name and runtime_names & {"bash", "shell", "sh"}:
        return PoolType.SHELL
    raise PoolError(
        PoolErrorKind.CONFIG,
        "Cannot tell from the pool's metadata whether it is a Python or a Shell pool "
        f"(kernel {kernel_name or 'none'}, runtimes {sorted(runtimes) or 'none'}); "
        "set DSMCP_POOL_TYPE to python or shell.",
    )


# ---- code run inside the session ----------------------------------------------------------

# One expression, so nothing lands in the user's namespace; its value is the exit code.
# /mnt/data may not exist when the local pool runs without a sandbox: then stay in the cwd.
_SHELL_VIA_PYTHON = (
    "(lambda r: (__import__('sys').stdout.write(r.stdout), __import__('sys').stderr.write(r.stderr), "
    "r.returncode)[-1])(__import__('subprocess').run({command}, shell=True, executable='/bin/bash', "
    "stdin=__import__('subprocess').DEVNULL, capture_output=True, text=True, errors='replace', "
    "cwd='/mnt/data' if __import__('os').path.isdir('/mnt/data') else None))"
)

_DELETE_VIA_PYTHON = (
    "(lambda os, shutil, p: 'missing' if not os.path.lexists(p) else "
    "(shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)) or 'deleted')"
    "(__import__('os'), __import__('shutil'), "
    "__import__('os').path.join('/mnt/data' if __import__('os').path.isdir('/mnt/data') else '.', {path}))"
)


def _shell_via_python(command: str) -> str:
    # repr() always yields a Python literal that evaluates back to the same string.
    return _SHELL_VIA_PYTHON.format(command=repr(command))


def _delete_via_python(path: str) -> str:
    return _DELETE_VIA_PYTHON.format(path=repr(path))


# ---- parsing ------------------------------------------------------------------------------


def _json_object(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        payload = response.json()
    except ValueError as exc:
        raise PoolError(
            PoolErrorKind.SERVER,
            f"The session pool sent an answer that is not JSON (HTTP {response.status_code}); retry, "
            "and if it persists check that DSMCP_POOL_ENDPOINT points at a session pool.",
            status=response.status_code,
        ) from exc
    if not isinstance(payload, dict):
        raise PoolError(
            PoolErrorKind.SERVER,
            f"The session pool sent an unexpected answer (HTTP {response.status_code}); retry.",
            status=response.status_code,
        )
    return payload


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _name_versions(value: Any) -> dict[str, str]:
    return {str(item["name"]): str(item.get("version") or "") for item in _items(value) if item.get("name")}


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _size(value: Any) -> int:
    size = _as_int(value)
    return size if size is not None and size >= 0 else 0


def _current_file_info(item: Mapping[str, Any], parent: str) -> FileInfo:
    name = _relative(str(item.get("name") or ""))
    directory = item.get("directory")
    if isinstance(directory, str) and directory.startswith("/"):
        base = _relative(directory)
    elif isinstance(directory, str) and directory.strip("/"):
        base = _join(parent, directory.strip("/"))  # relative to the listed folder
    else:
        base = parent
    content_type = item.get("contentType")
    modified = item.get("lastModifiedAt")
    return FileInfo(
        path=_join(base, name),
        size=_size(item.get("sizeInBytes")),
        is_dir=str(item.get("type") or "").lower() == "directory",
        modified=str(modified) if modified else None,
        content_type=str(content_type) if content_type else None,
    )


def _uploaded(payload: Mapping[str, Any], path: str, size: int, *, legacy: bool) -> FileInfo:
    """The FileInfo an upload answered with (legacy: a `value` list; current: one resource)."""
    if legacy:
        listed = [_legacy_file_info(item) for item in _items(payload.get("value"))]
        return listed[0] if listed else FileInfo(path=path, size=size)
    modified = payload.get("lastModifiedAt")
    content_type = payload.get("contentType")
    return FileInfo(
        path=path,
        size=_size(payload.get("sizeInBytes", size)),
        modified=str(modified) if modified else None,
        content_type=str(content_type) if content_type else None,
    )


# WHATWG form encoding of multipart parameters, as browsers and httpx send them.
_FORM_ESCAPES = {ord('"'): "%22", ord("\\"): "\\\\", **{c: f"%{c:02X}" for c in range(0x20) if c != 0x1B}}


def _form_quote(filename: str) -> str:
    return filename.translate(_FORM_ESCAPES)


def _legacy_file_info(item: Mapping[str, Any]) -> FileInfo:
    properties = item.get("properties")
    props: Mapping[str, Any] = properties if isinstance(properties, dict) else item
    modified = props.get("lastModifiedTime")
    return FileInfo(
        path=_relative(str(props.get("filename") or "")),
        size=_size(props.get("size")),
        modified=str(modified) if modified else None,
    )


_SUCCESS = {"success", "succeeded"}


def _parse_execution(response: httpx.Response, *, legacy: bool, status_is_exit_code: bool) -> Execution:
    payload = _json_object(response)
    sandbox_id = response.headers.get("x-ms-session-guid")
    if legacy:
        properties = payload.get("properties")
        fields: Mapping[str, Any] = properties if isinstance(properties, dict) else payload
        status = str(fields.get("status") or "")
        value = fields["result"] if "result" in fields else fields.get("executionResult")
    else:
        result = payload.get("result")
        fields = result if isinstance(result, dict) else {}
        status = str(payload.get("status") or "")
        value = fields.get("executionResult")
    stdout = str(fields.get("stdout") or "")
    stderr = str(fields.get("stderr") or "")
    error = payload.get("error")
    if isinstance(error, dict) and error.get("message") and not stderr:
        stderr = str(error["message"])
    # Shell pools put the process exit code in `status` ("0"); a timeout still says "Failed".
    exit_code = _as_int(status) if status_is_exit_code else None
    succeeded = exit_code == 0 if exit_code is not None else status.lower() in _SUCCESS
    images: list[Image] = []
    if isinstance(value, dict) and str(value.get("type")).lower() == "image":
        image = _decode_image(value)
        images = [image] if image else []
        value = None
    if value == "":
        value = None
    return Execution(
        succeeded=succeeded,
        stdout=stdout,
        stderr=stderr,
        result=None if status_is_exit_code else value,
        images=images,
        exit_code=exit_code,
        duration_ms=_size(fields.get("executionTimeInMilliseconds")),
        sandbox_id=sandbox_id,
    )


def _decode_image(value: Mapping[str, Any]) -> Image | None:
    try:
        data = base64.b64decode(str(value.get("base64_data") or ""), validate=True)
    except (binascii.Error, ValueError):
        logger.warning("the pool returned an image whose base64 data cannot be decoded")
        return None
    return Image(format=str(value.get("format") or "png").lower(), data=data) if data else None
