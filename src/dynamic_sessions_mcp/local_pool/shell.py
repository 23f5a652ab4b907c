"""Shell pools: each command is a fresh sandboxed process on the session dir (state lives in files)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dynamic_sessions_mcp.local_pool.sandbox import Sandbox

OUTPUT_CAP = 16 * 1024 * 1024  # bytes kept per stream; the rest is drained and dropped
TIMEOUT_EXIT_CODE = 124  # what coreutils `timeout` returns
_TRUNCATED = "\n[... output truncated at 16 MiB ...]"


@dataclass
class ShellOutcome:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool


async def _read_capped(stream: asyncio.StreamReader | None) -> str:
    """Read a stream to EOF keeping the first OUTPUT_CAP bytes, so a chatty command cannot exhaust memory."""
    if stream is None:
        return ""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = OUTPUT_CAP - len(kept)
        if len(chunk) > room:
            truncated = True
        kept += chunk[: max(room, 0)]
    return kept.decode(errors="replace") + (_TRUNCATED if truncated else "")


async def _feed(stream: asyncio.StreamWriter | None, data: str | None) -> None:
    if stream is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            stream.write(data.encode())
            await stream.drain()
        stream.close()


async def run_shell(
    sandbox: Sandbox,
    session_dir: Path,
    *,
    command: str | None = None,
    argv: list[str] | None = None,
    stdin: str | None = None,
    timeout_s: float,
) -> ShellOutcome:
    """Run `command` (via bash -c) or `argv` in a new sandbox whose cwd is the session dir (/mnt/data
    in tier A, its host path in tier B, so commands use relative paths); kill it at the timeout."""
    if (command is None) == (argv is None) or argv == []:
        raise ValueError("give exactly one of command or a non-empty argv")
    cmd = ["/bin/bash", "-c", command] if command is not None else list(argv or [])
    started = time.monotonic()
    proc = await sandbox.spawn(
        f"sh-{secrets.token_hex(6)}",
        session_dir,
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p = proc.process
    readers = asyncio.gather(_read_capped(p.stdout), _read_capped(p.stderr), _feed(p.stdin, stdin))
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(p.wait()), timeout=timeout_s)
    except TimeoutError:
        timed_out = True
    finally:
        # Also reached on cancellation; kill() waits for the tree and removes the cgroup.
        await proc.kill()
    try:
        out, err, _ = await asyncio.wait_for(readers, timeout=5.0)
    except TimeoutError:  # a leaked descendant kept a pipe open; it is dead now, so give up on it
        readers.cancel()
        out, err = "", ""
    code = p.returncode if p.returncode is not None else -1
    return ShellOutcome(
        exit_code=TIMEOUT_EXIT_CODE if timed_out else (128 - code if code < 0 else code),
        stdout=out,
        stderr=err,
        duration_ms=int((time.monotonic() - started) * 1000),
        timed_out=timed_out,
    )
