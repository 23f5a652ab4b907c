"""One sandboxed IPython kernel per session, driven over jupyter's ipc transport.

The kernel runs inside its own sandbox (tier A: bwrap with an empty netns; tier B: Landlock with
inet sockets denied), so it talks over Unix sockets in a connection dir bound into (or allowed to)
the sandbox, and is interrupted with `interrupt_request` messages because signals cannot reach it
across `--new-session`. Code should use paths relative to its working directory, the session
directory: that is /mnt/data in tier A but the host path of the session directory in tier B.
Everything the kernel sends is untrusted: sandboxed code knows the HMAC key, so outputs are
size-capped and validated, never trusted for control flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from dynamic_sessions_mcp.local_pool.sandbox import Sandbox, SandboxProcess, Tier

logger = logging.getLogger(__name__)

OUTPUT_CAP = 16 * 1024 * 1024  # characters per stream, result and total images
_MAX_MESSAGE_BYTES = 4 * OUTPUT_CAP  # zmq drops (disconnects) larger single messages
_INTERRUPT_GRACE_S = 3.0
_START_TIMEOUT_S = 60.0
_POLL_S = 0.2
_VALUE_MIME = "application/x-dsmcp-value"
_IMAGE_MIMES = {"image/png": "png", "image/jpeg": "jpeg"}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_TRUNCATED = "\n[... output truncated at 16 MiB ...]"

# Registered in the kernel at start: adds a MIME type carrying the last expression as JSON text.
# Non-JSON objects (and anything unexpected) yield None, so the host falls back to text/plain.
_SETUP_CODE = f"""
def __dsmcp_setup():
    import json, math
    from IPython.core.formatters import BaseFormatter

    def conv(o, depth=0):
        if depth > 100:
            raise ValueError("too deep")
        if o is None or type(o) in (bool, str, int):
            return o
        if type(o) is float:
            return o if math.isfinite(o) else repr(o)
        if type(o) is list:
            return [conv(x, depth + 1) for x in o]
        if type(o) is dict and all(type(k) is str for k in o):
            return {{k: conv(v, depth + 1) for k, v in o.items()}}
        raise TypeError("not JSON")

    class ValueFormatter(BaseFormatter):
        format_type = {_VALUE_MIME!r}

        def __call__(self, obj):
            try:
                return json.dumps(conv(obj), allow_nan=False)
            except Exception:
                return None

    fmt = get_ipython().display_formatter
    fmt.formatters[{_VALUE_MIME!r}] = ValueFormatter(parent=fmt)

__dsmcp_setup()
del __dsmcp_setup
"""
# Tier B has no pty devices (they would expose the host's terminals), so `!cmd` runs without one.
_NO_PTY_SETUP = "get_ipython().system = get_ipython().system_raw"

_context: zmq.asyncio.Context | None = None


def _zmq_context() -> zmq.asyncio.Context:
    """One context for all kernel clients, with a per-message size cap applied to every socket."""
    global _context
    if _context is None:
        _context = zmq.asyncio.Context()
        _context.setsockopt(zmq.MAXMSGSIZE, _MAX_MESSAGE_BYTES)
    return _context


@dataclass
class KernelOutcome:
    status: Literal["ok", "error", "timeout", "died"]
    stdout: str
    stderr: str
    has_result: bool
    result: Any
    images: list[tuple[str, str]]
    duration_ms: int
    message: str | None


class _CappedText:
    """Accumulates untrusted text up to OUTPUT_CAP characters, noting truncation once."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False

    def add(self, text: str) -> None:
        room = OUTPUT_CAP - self._size
        if room <= 0:
            self.truncated = True
            return
        if len(text) > room:
            text, self.truncated = text[:room], True
        self._parts.append(text)
        self._size += len(text)

    def value(self) -> str:
        return "".join(self._parts) + (_TRUNCATED if self.truncated else "")


@dataclass
class _Collector:
    """Maps the IOPub messages of one execution onto a KernelOutcome."""

    stdout: _CappedText = field(default_factory=_CappedText)
    stderr: _CappedText = field(default_factory=_CappedText)
    has_result: bool = False
    result: Any = None
    images: list[tuple[str, str]] = field(default_factory=list)
    image_bytes: int = 0
    error: bool = False

    def feed(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "stream":
            text = content.get("text")
            if isinstance(text, str):
                (self.stderr if content.get("name") == "stderr" else self.stdout).add(text)
        elif msg_type in ("execute_result", "display_data"):
            data = content.get("data")
            if isinstance(data, dict):
                self._images(data)
                if msg_type == "execute_result":
                    self._result(data)
        elif msg_type == "error":
            self.error = True
            tb = content.get("traceback")
            lines = [x for x in tb if isinstance(x, str)] if isinstance(tb, list) else []
            if not lines:
                lines = [f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"]
            text = _ANSI.sub("", "\n".join(lines))
            self.stderr.add(text if text.endswith("\n") else text + "\n")

    def _images(self, data: dict[str, Any]) -> None:
        for mime, fmt in _IMAGE_MIMES.items():
            b64 = data.get(mime)
            if isinstance(b64, str) and self.image_bytes + len(b64) <= OUTPUT_CAP:
                self.images.append((fmt, b64.replace("\n", "")))
                self.image_bytes += len(b64)

    def _result(self, data: dict[str, Any]) -> None:
        value = data.get(_VALUE_MIME)
        if isinstance(value, str) and len(value) <= OUTPUT_CAP:
            with contextlib.suppress(ValueError, RecursionError):
                self.result, self.has_result = json.loads(value), True
                return
        text = data.get("text/plain")
        if isinstance(text, str):
            capped = _CappedText()
            capped.add(text)
            self.result, self.has_result = capped.value(), True

    def outcome(
        self, status: Literal["ok", "error", "timeout", "died"], started: float, message: str | None
    ) -> KernelOutcome:
        return KernelOutcome(
            status=status,
            stdout=self.stdout.value(),
            stderr=self.stderr.value(),
            has_result=self.has_result,
            result=self.result,
            images=self.images,
            duration_ms=int((time.monotonic() - started) * 1000),
            message=message,
        )


def _short_tmp() -> str:
    """A temp dir short enough for ipc socket paths (<dir>/dsk-XXXXXXXX/k-<port> < 108 bytes)."""
    base = tempfile.gettempdir()
    return base if len(base) <= 60 else "/tmp"  # noqa: S108 - mkdtemp makes a private 0700 dir in it


class KernelStartError(RuntimeError):
    """The sandboxed kernel did not come up; the message carries the tail of its log."""


class PythonKernel:
    """A started, warmed-up IPython kernel in its own sandbox, bound to one session directory."""

    def __init__(
        self,
        sandbox: Sandbox,
        session_dir: Path,
        sandbox_id: str,
        conn_dir: Path,
        proc: SandboxProcess,
        log: BinaryIO,
    ) -> None:
        self.sandbox = sandbox
        self.session_dir = session_dir
        self.sandbox_id = sandbox_id
        self._conn_dir = conn_dir
        self._proc = proc
        self._log = log  # anonymous file (not in the bound conn dir, so the sandbox cannot swap it)
        self._client: AsyncKernelClient | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def start(cls, sandbox: Sandbox, session_dir: Path) -> PythonKernel:
        """Start the kernel, connect, and run the setup/warm-up so the first real execute is fast."""
        await sandbox.prepare_font_cache()
        sandbox_id = secrets.token_hex(8)
        conn_dir = Path(tempfile.mkdtemp(prefix="dsk-", dir=_short_tmp()))
        conn_file = conn_dir / "kernel.json"
        write_connection_file(str(conn_file), transport="ipc", ip=str(conn_dir / "k"))
        log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the kernel; closed in shutdown
        command = [
            sandbox.python,
            "-m",
            "ipykernel_launcher",
            "-f",
            str(conn_file),
            "--InteractiveShell.colors=nocolor",
            "--HistoryManager.enabled=False",
        ]
        try:
            proc = await sandbox.spawn(
                sandbox_id, session_dir, command, rw_binds=[conn_dir], stdout=log, stderr=log
            )
        except BaseException:
            log.close()
            shutil.rmtree(conn_dir, ignore_errors=True)
            raise
        kernel = cls(sandbox, session_dir, sandbox_id, conn_dir, proc, log)
        try:
            await kernel._connect()
            setup = [_SETUP_CODE, _NO_PTY_SETUP] if sandbox.tier is Tier.LANDLOCK else [_SETUP_CODE]
            for code in (*setup, "1"):
                outcome = await kernel.execute(code, _START_TIMEOUT_S, store_history=False)
                if outcome.status != "ok":
                    raise KernelStartError(f"kernel warm-up failed: {outcome.message or outcome.stderr}")
        except BaseException:
            await kernel.shutdown()
            raise
        return kernel

    async def _connect(self) -> None:
        client = AsyncKernelClient(context=_zmq_context())
        client.load_connection_file(str(self._conn_dir / "kernel.json"))
        # No heartbeat channel: its thread per kernel pings every second, and readiness and death
        # are judged by the process instead (see _wait_ready).
        client.start_channels(hb=False)
        self._client = client
        await self._wait_ready(client)

    async def _wait_ready(self, client: AsyncKernelClient) -> None:
        """Ask for kernel_info until it answers and IOPub delivers, watching the process itself.

        jupyter_client's wait_for_ready judges liveness by heartbeats, which a kernel still
        starting on a busy machine can miss: it then reports a live kernel as dead.
        """
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if not self._proc.alive:
                raise KernelStartError(f"kernel exited during start: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise KernelStartError(
                    f"kernel did not answer within {_START_TIMEOUT_S:g} s: {self._log_tail()}"
                )
            client.kernel_info()
            try:
                reply = await client.get_shell_msg(timeout=1)
            except queue.Empty:
                continue
            if reply.get("msg_type") != "kernel_info_reply":
                continue
            try:  # IOPub is subscribed once it delivers the status of that request
                await client.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            return

    def _log_tail(self) -> str:
        try:
            size = os.fstat(self._log.fileno()).st_size
            data = os.pread(self._log.fileno(), 2000, max(0, size - 2000))
        except (OSError, ValueError):
            return "(no kernel log)"
        return data.decode(errors="replace").strip() or "(empty kernel log)"

    @property
    def alive(self) -> bool:
        return not self._closed and self._proc.alive

    async def execute(self, code: str, timeout_s: float, *, store_history: bool = True) -> KernelOutcome:
        """Run `code`; never hangs: interrupt at the timeout, kill after the grace, notice death."""
        async with self._lock:
            try:
                return await self._execute(code, timeout_s, store_history)
            except asyncio.CancelledError:
                # The caller went away; stop the code so it does not block the next execute.
                if self.alive:
                    self._interrupt()
                raise

    async def _execute(self, code: str, timeout_s: float, store_history: bool) -> KernelOutcome:
        started = time.monotonic()
        collected = _Collector()
        if not self.alive or self._client is None:
            return collected.outcome("died", started, "the kernel is not running; start a new session")
        client = self._client
        await self.sandbox.hand_over(self.session_dir)
        msg_id = client.execute(code, store_history=store_history, allow_stdin=False)
        deadline = started + timeout_s
        interrupted_at: float | None = None
        while True:
            now = time.monotonic()
            if interrupted_at is None and now >= deadline:
                self._interrupt()
                interrupted_at = now
            elif interrupted_at is not None and now >= interrupted_at + _INTERRUPT_GRACE_S:
                await self.shutdown()
                return collected.outcome(
                    "timeout",
                    started,
                    f"execution exceeded {timeout_s:g} s and was stopped; the interrupt did not "
                    "work, so the session's sandbox was killed and its state is lost",
                )
            # After shutdown() the channels are closed and get_iopub_msg fails at once, without
            # yielding: checking only the process (whose exit asyncio learns on a later loop turn)
            # spun here and froze the pool until the deadline.
            if self._closed or not self._proc.alive:
                return collected.outcome("died", started, await self._death_message())
            try:
                msg = await client.get_iopub_msg(timeout=_POLL_S)
            except queue.Empty:
                continue
            except Exception as exc:  # an undecodable or badly signed message: untrusted, skip it
                logger.debug("ignoring bad iopub message: %r", exc)
                continue
            if not isinstance(msg, dict) or msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            msg_type = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
            content = msg.get("content")
            if not isinstance(msg_type, str) or not isinstance(content, dict):
                continue
            if msg_type == "status" and content.get("execution_state") == "idle":
                break
            collected.feed(msg_type, content)
        await self._drain_shell_reply(msg_id)
        if interrupted_at is not None:
            return collected.outcome(
                "timeout",
                started,
                f"execution exceeded {timeout_s:g} s and was interrupted (KeyboardInterrupt); "
                "the session's state is kept",
            )
        return collected.outcome("error" if collected.error else "ok", started, None)

    def _interrupt(self) -> None:
        assert self._client is not None
        msg = self._client.session.msg("interrupt_request", content={})
        self._client.control_channel.send(msg)

    async def _drain_shell_reply(self, msg_id: str) -> None:
        """Consume the execute_reply so replies do not pile up on the shell socket."""
        assert self._client is not None
        with contextlib.suppress(Exception):
            while True:
                reply = await self._client.get_shell_msg(timeout=1.0)
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    return

    async def _death_message(self) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.process.wait(), timeout=1.0)
        code = self._proc.process.returncode
        oom = self._proc.cgroup.oom_kills() > 0
        stopped = self._closed
        await self.shutdown()
        if stopped:
            return "the session was stopped while the code was running"
        if oom:
            return (
                f"the kernel was killed (out of memory, limit {self.sandbox.limits.memory_mb} MB); "
                "the session's state is lost"
            )
        if code in (137, -signal.SIGKILL):  # bwrap reports a SIGKILLed child as 128 + 9
            cause = "by a signal" if self._proc.cgroup.memory_limited else "possibly out of memory"
            return f"the kernel was killed ({cause}); the session's state is lost"
        return f"the kernel process exited (code {code}); the session's state is lost"

    async def shutdown(self) -> None:
        """Kill the sandbox's whole process tree and remove the connection dir; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.stop_channels()
        await self._proc.kill()
        self._log.close()
        shutil.rmtree(self._conn_dir, ignore_errors=True)
