"""Host-side file operations on a session directory that sandboxed code controls.

The sandbox can plant symlinks (to host secrets), FIFOs (to hang the server) and swap directories
while we work, so nothing here resolves a path string: every operation walks from the session
directory's fd one component at a time with `O_NOFOLLOW`, reads only regular files, never opens a
FIFO blocking, and lists with `follow_symlinks=False`. Paths are what clients send: relative to
/mnt/data or absolute under it; `..` is refused, not resolved.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mimetypes
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MOUNT = "/mnt/data"
DIR_SIZE = 4096  # what Azure reports as a directory's size
MAX_LIST_ENTRIES = 10_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Files and directories the host creates are owned by the server's uid, which is the uid the
# sandbox user maps to (bwrap --unshare-user), so owner permissions are enough for it.
FILE_MODE = 0o644
DIR_MODE = 0o755


class FileOpError(Exception):
    """A file operation the client asked for cannot be done; `status` is the HTTP answer."""

    status = 400
    code = "InvalidPath"


class InvalidPath(FileOpError):
    pass


class NotFound(FileOpError):
    status = 404
    code = "FileNotFound"


class Refused(FileOpError):
    """The entry exists but is not something we serve (a symlink, FIFO, socket or device)."""

    code = "UnsupportedFileType"


class Conflict(FileOpError):
    status = 409
    code = "Conflict"


class TooLarge(FileOpError):
    status = 413
    code = "FileTooLarge"


@dataclass(frozen=True)
class FileEntry:
    """A regular file or directory; `directory` is '/'-joined, relative to the listed folder."""

    name: str
    directory: str
    is_dir: bool
    size: int
    mtime: float

    @property
    def content_type(self) -> str:
        return "application/octet-stream" if self.is_dir else content_type(self.name)

    @property
    def modified(self) -> str:
        return iso_utc(self.mtime)


def iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def content_type(name: str) -> str:
    guessed = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


# ---- path parsing -------------------------------------------------------------------------


def _component(part: str) -> str:
    if part in ("", ".", "..") or "/" in part or "\x00" in part:
        raise InvalidPath(f"invalid path component {part!r}")
    if len(part.encode("utf-8", "surrogateescape")) > 255:
        raise InvalidPath("path component longer than 255 bytes")
    return part


def parse_dir(path: str | None) -> tuple[str, ...]:
    """A folder relative to /mnt/data, or absolute under it; None or '' is /mnt/data itself."""
    path = (path or "").strip()
    if path.startswith("/"):
        if path != MOUNT and not path.startswith(MOUNT + "/"):
            raise InvalidPath(f"path must be under {MOUNT}")
        path = path[len(MOUNT) :]
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPath("'..' is not allowed in paths")
    return tuple(_component(p) for p in parts)


def parse_name(name: str) -> str:
    """A single file name (the `{name}` path segment of the current contract)."""
    return _component(name)


def parse_file_path(path: str) -> tuple[tuple[str, ...], str]:
    """A file path as legacy clients send it ('a.txt', 'sub/a.txt', '/mnt/data/sub/a.txt')."""
    parts = parse_dir(path)
    if not parts:
        raise InvalidPath("a file name is required")
    return parts[:-1], parts[-1]


# ---- fd walking ---------------------------------------------------------------------------


def _open_component(dir_fd: int, name: str, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise NotFound(f"no such directory: {name}") from None
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    return _open_component(dir_fd, name, create=False)


@contextlib.contextmanager
def open_dir(root: Path, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
    """Yield an fd of root/parts, refusing symlinked components; optionally create them."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise NotFound("the session's files are gone (the session ended)") from None
    try:
        for part in parts:
            try:
                child = _open_component(fd, part, create)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(f"{part} is not a directory") from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _entry(dir_fd: int, name: str, directory: str) -> FileEntry:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise NotFound(f"no such file: {name}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise Refused(f"{name} is not a regular file or directory")
    is_dir = stat.S_ISDIR(st.st_mode)
    return FileEntry(name, directory, is_dir, DIR_SIZE if is_dir else st.st_size, st.st_mtime)


# ---- operations ---------------------------------------------------------------------------


def describe(root: Path, parts: tuple[str, ...], name: str) -> FileEntry:
    with open_dir(root, parts) as dfd:
        return _entry(dfd, name, "/".join(parts))


def list_dir(root: Path, parts: tuple[str, ...], *, recursive: bool = False) -> list[FileEntry]:
    """Regular files and directories (symlinks and special files are left out)."""
    out: list[FileEntry] = []
    with open_dir(root, parts) as dfd:
        _scan(dfd, "", recursive, out)
    return out


def _scan(dir_fd: int, prefix: str, recursive: bool, out: list[FileEntry]) -> None:
    found: list[FileEntry] = []
    with os.scandir(dir_fd) as it:
        for de in it:
            if len(out) + len(found) >= MAX_LIST_ENTRIES:
                break
            if de.is_dir(follow_symlinks=False):
                found.append(
                    FileEntry(de.name, prefix, True, DIR_SIZE, de.stat(follow_symlinks=False).st_mtime)
                )
            elif de.is_file(follow_symlinks=False):
                st = de.stat(follow_symlinks=False)
                found.append(FileEntry(de.name, prefix, False, st.st_size, st.st_mtime))
    found.sort(key=lambda e: e.name)
    out.extend(found)
    if not recursive:
        return
    for entry in found:
        if not entry.is_dir:
            continue
        try:
            child = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue  # replaced by a symlink or removed since the scan: skip it
        try:
            _scan(child, f"{prefix}/{entry.name}" if prefix else entry.name, recursive, out)
        finally:
            os.close(child)


@dataclass
class OpenedFile:
    """A regular file opened for download; closed when its chunks are exhausted (or on GC)."""

    handle: io.FileIO
    size: int
    mtime: float

    def chunks(self, chunk: int = 256 * 1024) -> Iterator[bytes]:
        """At most `size` bytes (what we announced), however the file changes meanwhile."""
        try:
            offset = 0
            while offset < self.size:
                data = os.pread(self.handle.fileno(), min(chunk, self.size - offset), offset)
                if not data:
                    return
                offset += len(data)
                yield data
        finally:
            self.handle.close()


def open_file(root: Path, parts: tuple[str, ...], name: str) -> OpenedFile:
    """Open a regular file; symlinks, FIFOs and everything else are refused without blocking."""
    with open_dir(root, parts) as dfd:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            raise NotFound(f"no such file: {name}") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                raise Refused(f"{name} is not a regular file") from None
            raise
    handle = io.FileIO(fd, "rb", closefd=True)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{name} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        handle.close()
        raise
    return OpenedFile(handle, st.st_size, st.st_mtime)


def delete(root: Path, parts: tuple[str, ...], name: str) -> None:
    """Unlink a file or remove a directory tree, without following any symlink."""
    with open_dir(root, parts) as dfd:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound(f"no such file: {name}") from None
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)


class StagedUpload:
    """An upload being received: written to a private staging directory, size-capped, then
    renamed into the session directory so the sandbox never sees a partial file."""

    def __init__(self, staging_dir: Path, limit: int) -> None:
        self._staging_dir = staging_dir
        self._name = f"up-{secrets.token_hex(12)}"
        self._limit = limit
        self.size = 0
        self._dfd: int | None = os.open(staging_dir, _DIR_FLAGS)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd: int | None = os.open(self._name, flags, FILE_MODE, dir_fd=self._dfd)
            os.fchmod(self._fd, FILE_MODE)
        except BaseException:
            os.close(self._dfd)
            self._dfd = None
            raise

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        self.size += len(data)
        if self.size > self._limit:
            raise TooLarge(f"upload exceeds the limit of {self._limit} bytes")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self, root: Path, parts: tuple[str, ...], name: str) -> FileEntry:
        """Move the upload to root/parts/name (creating folders, replacing a file of that name)."""
        self._close_file()
        assert self._dfd is not None
        with open_dir(root, parts, create=True) as target:
            try:
                os.rename(self._name, name, src_dir_fd=self._dfd, dst_dir_fd=target)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise Conflict(f"{name} is a directory") from None
                raise
            return _entry(target, name, "/".join(parts))

    def discard(self) -> None:
        """Remove whatever is left in staging; safe to call after commit."""
        self._close_file()
        if self._dfd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name, dir_fd=self._dfd)
            os.close(self._dfd)
            self._dfd = None

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
