"""The Pool protocol: everything a tool may ask of any session pool, whatever the backend.

Backend differences (legacy `properties` envelope vs flat body, `result` vs `executionResult`,
Shell pools' exit code in `status`) stay inside the backends; tools only see these types.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class PoolType(enum.StrEnum):
    PYTHON = "python"
    SHELL = "shell"


class ExecutionKind(enum.StrEnum):
    """What an execution runs: Python code or a bash command line (on either pool type)."""

    PYTHON = "python"
    SHELL = "shell"


@dataclass(frozen=True)
class Image:
    """An image the execution displayed (a matplotlib figure, `display(Image(...))`)."""

    format: str  # "png", "jpeg", ...
    data: bytes


@dataclass(frozen=True)
class Execution:
    """The outcome of one `run_python` / `run_shell` call."""

    succeeded: bool
    stdout: str = ""
    stderr: str = ""
    # The JSON value of the last expression (Python pools); None when there is none.
    result: Any = None
    images: list[Image] = field(default_factory=list)
    # The process exit code (shell commands); None for Python code.
    exit_code: int | None = None
    duration_ms: int = 0
    # The pool's id of the sandbox that ran this (Azure: X-Ms-Session-Guid); used to notice resets.
    sandbox_id: str | None = None
    # The pool may have cut stdout/stderr at this many bytes (its outputStreamsMaxLength); None = whole.
    streams_cut_at: int | None = None


@dataclass(frozen=True)
class FileInfo:
    """A file or directory under /mnt/data. `path` is relative to /mnt/data, '/'-separated."""

    path: str
    size: int
    is_dir: bool = False
    modified: str | None = None  # ISO 8601 as the pool reported it
    content_type: str | None = None


@dataclass(frozen=True)
class Download:
    data: bytes
    content_type: str | None


@dataclass(frozen=True)
class FileStream:
    """A download in progress: read `chunks` once, then `close()` (also when not read to the end)."""

    content_type: str | None
    size: int | None  # from Content-Length, when the pool sent it
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class PoolInfo:
    pool_type: PoolType
    api_version: str
    endpoint: str  # shown to operators, never to the model
    runtimes: dict[str, str] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)


class PoolErrorKind(enum.StrEnum):
    AUTH = "auth"  # 401: the credential was refused
    FORBIDDEN = "forbidden"  # 403: the identity lacks a role on the pool
    CAPACITY = "capacity"  # 404 on a session call: the pool is at maxConcurrentSessions
    NOT_FOUND = "not_found"  # 404 on a file or an execution
    TOO_LARGE = "too_large"  # 413
    THROTTLED = "throttled"  # 429 / 503
    TIMEOUT = "timeout"  # no answer in time
    CONNECTION = "connection"  # refused, reset or dropped connection
    BAD_REQUEST = "bad_request"  # 400: the pool rejected what we sent
    SERVER = "server"  # other 5xx, or an answer we cannot read
    CONFIG = "config"  # the bridge's own configuration cannot work with this pool


class PoolError(Exception):
    """A pool call failed. `message` is written for the agent: what happened, what to do next."""

    def __init__(self, kind: PoolErrorKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


class Pool(Protocol):
    """A session pool. `identifier` is the pool's session identifier, derived by `identity`."""

    @property
    def pool_type(self) -> PoolType: ...

    async def describe(self) -> PoolInfo: ...

    async def run_python(self, identifier: str, code: str, timeout_s: float) -> Execution: ...

    async def run_shell(self, identifier: str, command: str, timeout_s: float) -> Execution: ...

    @property
    def supports_background(self) -> bool:
        """True when executions can run asynchronously (`start_execution` / `get_execution`)."""
        ...

    async def start_execution(
        self, identifier: str, kind: ExecutionKind, source: str, timeout_s: float, execution_id: str
    ) -> str | None:
        """Start an asynchronous execution named `execution_id`; returns the sandbox id (as
        `Execution.sandbox_id`) when the pool tells it. Its outcome comes from get_execution."""
        ...

    async def get_execution(
        self, identifier: str, kind: ExecutionKind, execution_id: str
    ) -> Execution | None:
        """The outcome of an asynchronous execution; None while it runs; NOT_FOUND when unknown."""
        ...

    async def upload(self, identifier: str, path: str, data: bytes) -> FileInfo: ...

    async def download(self, identifier: str, path: str) -> Download: ...

    async def open_download(self, identifier: str, path: str) -> FileStream:
        """Start streaming a file; memory stays bounded whatever its size."""
        ...

    async def upload_stream(
        self, identifier: str, path: str, chunks: AsyncIterable[bytes], size: int | None
    ) -> FileInfo:
        """Write a file from a stream of chunks (`size` when known, sent as Content-Length)."""
        ...

    async def list_files(self, identifier: str, path: str, recursive: bool) -> list[FileInfo]: ...

    async def delete_file(self, identifier: str, path: str) -> None: ...

    async def end_session(self, identifier: str) -> None: ...
