"""Confine model-supplied paths to /mnt/data, the only directory a session pool shares."""

from __future__ import annotations

import posixpath

MOUNT = "/mnt/data"


class PathRefused(ValueError):
    """The path points outside /mnt/data or is malformed; str() says what to send instead."""


def to_pool_path(path: str) -> str:
    """Return `path` relative to /mnt/data ('' for the directory itself), or raise PathRefused."""
    raw = path.strip()
    if "\0" in raw or "\\" in raw:
        raise PathRefused(f"invalid path {path!r}: NUL and backslash are not allowed")
    if raw.startswith("/"):
        if raw != MOUNT and not raw.startswith(MOUNT + "/"):
            raise PathRefused(
                f"path {path!r} is outside {MOUNT}; files live in {MOUNT} "
                "(give a path relative to it, e.g. 'data.csv' or 'out/plot.png')"
            )
        raw = raw[len(MOUNT) :]
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"path {path!r} contains '..'; paths must stay inside {MOUNT}")
    return posixpath.join(*parts) if parts else ""


def display_path(pool_path: str) -> str:
    """The absolute path the model should use, e.g. 'a/b.txt' -> '/mnt/data/a/b.txt'."""
    return f"{MOUNT}/{pool_path}" if pool_path else MOUNT
