"""Local paths for stdio clients: upload_file reads, download_file writes, files on this machine
inside the directories the operator allowed (DSMCP_LOCAL_FILE_DIRS), so files never pass through
the model as base64. Paths are canonicalised (realpath): `..` and symlinks cannot escape."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio

CHUNK_BYTES = 1024 * 1024


class LocalPathRefused(ValueError):
    """The local path is outside the allowed directories, or not a usable file; str() says why."""


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class LocalFiles:
    """The allowed directories (canonical) and the checks every local path passes."""

    def __init__(self, directories: list[Path]) -> None:
        if not directories:
            raise ValueError("LocalFiles needs at least one allowed directory")
        self.roots = [os.path.realpath(os.path.expanduser(d)) for d in directories]
        for root in self.roots:
            if not os.path.isdir(root):
                raise ValueError(f"DSMCP_LOCAL_FILE_DIRS: {root} is not a directory")

    def describe(self) -> str:
        return ", ".join(self.roots)

    def resolve(self, local_path: str) -> str:
        """The canonical path; relative paths are taken from the first allowed directory."""
        raw = os.path.expanduser(local_path.strip())
        if not raw or "\0" in raw:
            raise LocalPathRefused("local_path is empty or contains NUL")
        candidate = raw if os.path.isabs(raw) else os.path.join(self.roots[0], raw)
        real = os.path.realpath(candidate)
        if not any(_within(real, root) for root in self.roots):
            raise LocalPathRefused(
                f"local_path {local_path!r} resolves outside the allowed directories ({self.describe()})"
            )
        return real

    def open_for_reading(self, local_path: str) -> tuple[BinaryIO, int, str]:
        """(file, size, canonical path) of an allowed regular file; the final component is opened
        without following a symlink, so a link swapped in after the check is refused."""
        real = self.resolve(local_path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LocalPathRefused(f"no such local file: {real}") from None
        except OSError as exc:
            raise LocalPathRefused(f"cannot read {real}: {exc.strerror}") from None
        file = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            file.close()
            raise LocalPathRefused(f"{real} is not a regular file")
        return file, info.st_size, real

    def target_for_writing(self, local_path: str) -> str:
        """The canonical path to write; its directory must exist, and it must not be a directory."""
        real = self.resolve(local_path)
        if os.path.isdir(real):
            raise LocalPathRefused(f"{real} is a directory; name the file to write")
        if not os.path.isdir(os.path.dirname(real)):
            raise LocalPathRefused(f"the directory of {real} does not exist")
        return real


async def read_chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, read in a worker thread (the caller closes the file)."""
    while chunk := await anyio.to_thread.run_sync(file.read, CHUNK_BYTES):
        yield chunk


async def write_atomically(target: str, chunks: AsyncIterator[bytes]) -> int:
    """Write `chunks` to a temporary file next to `target`, then rename it over `target`
    (which replaces a symlink there instead of following it). The file is private (0600), as
    mkstemp makes it. Returns the byte count."""
    directory = os.path.dirname(target)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".dsmcp-", suffix=".part")
    written = 0
    try:
        with os.fdopen(fd, "wb") as file:
            async for chunk in chunks:
                await anyio.to_thread.run_sync(file.write, chunk)
                written += len(chunk)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return written
