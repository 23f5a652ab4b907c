"""The session registry: identifier -> sandboxed session, like Azure's pool allocator.

Sessions appear on the first call with a new identifier (popping a pre-started kernel from the
warm pool, so that call costs one execute, not a kernel start), vanish after `cooldown_s` without
calls, on DELETE, or when their kernel timed out or died; a later call with the same identifier
then gets a fresh, empty session with a new sandbox id. Each session owns a random directory
(never derived from the identifier, which is caller-controlled) bound into its sandbox as /mnt/data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType
from dynamic_sessions_mcp.local_pool.python_kernel import KernelStartError, PythonKernel
from dynamic_sessions_mcp.local_pool.sandbox import Limits, Sandbox
from dynamic_sessions_mcp.local_pool.shell import run_shell

logger = logging.getLogger(__name__)

REFILL_CONCURRENCY = 2  # kernel starts in flight at once (each takes most of a core for ~0.6 s)
KERNEL_START_ATTEMPTS = 3
REFILL_DELAY_S = 0.3
MAX_EXECUTIONS_KEPT = 100  # per identifier, for GET executions/{id}
# ... and at most this much of their output, so a session printing megabytes on every run does
# not pile up 100 copies in the pool's memory. The newest execution is always kept.
MAX_EXECUTION_OUTPUT_KEPT = 8 * 1024 * 1024
_PROBE_TIMEOUT_S = 60.0
# Run inside a sandbox at start: what the sandboxed interpreter really has installed.
_PROBE = (
    "import importlib.metadata as m, json, platform; print(json.dumps({'python': platform.python_version(), "
    "'packages': sorted({(d.metadata['Name'] or '', d.version) for d in m.distributions()})}))"
)


class PoolAtCapacity(Exception):
    """Every session slot is taken (Azure answers 404 for this)."""


@dataclass(eq=False)
class Session:
    identifier: str
    sandbox_id: str
    directory: Path
    kernel: PythonKernel | None  # None in shell pools: every command is a fresh sandbox
    created_at: float = field(default_factory=time.time)
    last_accessed_at: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    def touch(self) -> None:
        self.last_accessed_at = time.time()


@dataclass(frozen=True)
class PoolFacts:
    """What GET metadata reports, probed once at start inside a real sandbox."""

    runtimes: list[dict[str, str]]
    packages: list[dict[str, str]]
    started_at: float


class SessionRegistry:
    def __init__(self, config: LocalPoolConfig) -> None:
        self.config = config
        self.sandbox: Sandbox | None = None
        self.facts: PoolFacts | None = None
        self._sessions: dict[str, Session] = {}
        self._creating: dict[str, asyncio.Task[Session]] = {}
        self._executions: dict[str, OrderedDict[str, dict[str, Any]]] = {}
        self._warm: deque[PythonKernel] = deque()
        self._waiters: deque[asyncio.Future[PythonKernel]] = deque()  # new sessions awaiting a kernel
        self._warm_starting = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._orphaned: dict[str, float] = {}  # identifiers whose executions outlive their session
        self._temp_base: Path | None = None
        self._root: Path | None = None
        self._closing = False

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def staging_dir(self) -> Path:
        return self._pool_root() / "staging"

    @property
    def ready_kernels(self) -> int:
        """Warm kernels waiting for a new identifier right now."""
        return len(self._warm)

    @property
    def isolation(self) -> str:
        return self.sandbox_or_fail().isolation

    async def start(self) -> None:
        """Check the sandbox works (refuse to start otherwise), probe the runtime, fill the warm pool."""
        config = self.config
        base = config.data_dir
        if base is None:
            base = self._temp_base = Path(tempfile.mkdtemp(prefix="dsmcp-pool-"))
        base.mkdir(parents=True, exist_ok=True)
        try:
            self._root = base / f"pool-{secrets.token_hex(6)}"
            self._root.mkdir(mode=0o700)
            self.staging_dir.mkdir(mode=0o700)
            sandbox = Sandbox(
                Limits.from_config(config),
                isolation=config.isolation,
                unsafe_no_sandbox=config.unsafe_no_sandbox,
                mpl_cache_dir=base / "mpl-cache",
            )
            await asyncio.to_thread(sandbox.self_test)  # raises SandboxUnavailable with a fix
            if sandbox.isolation == "none":
                logger.warning(
                    "!!! LOCAL POOL RUNNING WITHOUT A SANDBOX: code sent to this pool runs as this user "
                    "with full access to this machine and its network. Development only. !!!"
                )
            self.sandbox = sandbox
            await sandbox.prepare_font_cache()
            self.facts = await self._probe()
            if config.pool_type is LocalPoolType.PYTHON and config.warm_sessions > 0:
                await self._fill_warm_pool()
        except BaseException:
            await self.stop()
            raise
        self.spawn(self._reap_loop())
        logger.info(
            "local %s pool ready (isolation=%s, warm=%d, max_sessions=%d, cooldown=%gs)",
            config.pool_type.value,
            self.isolation,
            len(self._warm),
            config.max_sessions,
            config.cooldown_s,
        )

    async def stop(self) -> None:
        """Kill every sandbox (live and warm) and remove every directory the pool created."""
        self._closing = True
        for task in list(self._tasks) + list(self._creating.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._creating.values(), return_exceptions=True)
        sessions = list(self._sessions.values())
        warm = list(self._warm)
        self._warm.clear()
        await asyncio.gather(
            *(self._close(s) for s in sessions),
            *(k.shutdown() for k in warm),
            return_exceptions=True,
        )
        if self._root is not None:
            await asyncio.to_thread(shutil.rmtree, self._root, True)
        if self._temp_base is not None:
            await asyncio.to_thread(shutil.rmtree, self._temp_base, True)

    def sandbox_or_fail(self) -> Sandbox:
        if self.sandbox is None:
            raise RuntimeError("the session registry has not been started")
        return self.sandbox

    def facts_or_fail(self) -> PoolFacts:
        if self.facts is None:
            raise RuntimeError("the session registry has not been started")
        return self.facts

    def _pool_root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the session registry has not been started")
        return self._root

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background job (an asynchronous execution, a refill) that shutdown cancels."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- sessions -----------------------------------------------------------------------

    def get(self, identifier: str) -> Session | None:
        """The live session of `identifier`, if any; counts as a call (resets its idle timer)."""
        session = self._sessions.get(identifier)
        if session is None or self._expired(session):
            return None
        session.touch()
        return session

    def sessions(self) -> list[Session]:
        return [s for s in self._sessions.values() if not self._expired(s)]

    async def acquire(self, identifier: str) -> Session:
        """The session of `identifier`, created on first use; raises PoolAtCapacity when full."""
        await self._reap_expired()
        session = self.get(identifier)
        idle_and_dead = (
            session is not None
            and session.kernel is not None
            and not session.kernel.alive
            and not session.lock.locked()
        )
        if session is not None and idle_and_dead:  # its sandbox died between calls: it is gone
            await self.discard(session)
            session = None
        if session is not None:
            return session
        task = self._creating.get(identifier)
        if task is None:
            if len(self._sessions) + len(self._creating) >= self.config.max_sessions:
                raise PoolAtCapacity(
                    f"the session pool is at capacity ({self.config.max_sessions} live sessions); "
                    "end unused sessions or wait for them to expire"
                )
            task = asyncio.create_task(self._create(identifier))
            self._creating[identifier] = task
            task.add_done_callback(lambda _t: self._creating.pop(identifier, None))
        return await asyncio.shield(task)

    @contextlib.asynccontextmanager
    async def exclusive(self, identifier: str) -> AsyncIterator[Session]:
        """The session of `identifier`, held for one execution at a time; if it was closed while
        we waited for it (deleted, timed out), a fresh one is used instead."""
        while True:
            session = await self.acquire(identifier)
            async with session.lock:
                if session.closed:
                    continue
                session.touch()
                try:
                    yield session
                finally:
                    session.touch()
                return

    async def delete(self, identifier: str) -> bool:
        """End a session now (kill its sandbox, remove its files); False when there is none."""
        session = self._sessions.get(identifier)
        self._executions.pop(identifier, None)
        if session is None:
            return False
        await self._close(session)
        return True

    async def discard(self, session: Session) -> None:
        """Drop a session whose kernel is gone or untrustworthy; the identifier starts afresh.
        Its executions stay readable for one cooldown period."""
        self._orphaned[session.identifier] = time.time()
        await self._close(session)

    def expire_at(self, session: Session) -> float:
        return session.last_accessed_at + self.config.cooldown_s

    def _expired(self, session: Session) -> bool:
        return not session.lock.locked() and time.time() >= self.expire_at(session)

    async def _create(self, identifier: str) -> Session:
        if self.config.pool_type is LocalPoolType.PYTHON:
            kernel = await self._take_kernel()
            session = Session(identifier, kernel.sandbox_id, kernel.session_dir, kernel)
        else:
            session = Session(identifier, secrets.token_hex(8), self._new_dir(), None)
        self._sessions[identifier] = session
        logger.info("session %s… started (sandbox %s)", identifier[:6], session.sandbox_id)
        return session

    async def _close(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        if self._sessions.get(session.identifier) is session:
            del self._sessions[session.identifier]
        if session.kernel is not None:
            await session.kernel.shutdown()
        await asyncio.to_thread(shutil.rmtree, session.directory, True)
        logger.info("session %s… ended (sandbox %s)", session.identifier[:6], session.sandbox_id)

    async def _reap_expired(self) -> None:
        for session in [s for s in self._sessions.values() if self._expired(s)]:
            self._executions.pop(session.identifier, None)
            await self._close(session)
        now = time.time()
        for identifier, since in list(self._orphaned.items()):
            if identifier in self._sessions:
                del self._orphaned[identifier]
            elif now >= since + self.config.cooldown_s:
                del self._orphaned[identifier]
                self._executions.pop(identifier, None)

    async def _reap_loop(self) -> None:
        interval = min(max(self.config.cooldown_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reap_expired()
            except Exception:
                logger.exception("reaping idle sessions failed")

    def _new_dir(self) -> Path:
        path = self._pool_root() / f"s-{secrets.token_hex(8)}"
        path.mkdir(mode=0o700)
        return path

    # ---- warm pool (python pools) -------------------------------------------------------

    async def _start_kernel(self) -> PythonKernel:
        """A started kernel on a new session directory; a failed start is retried (a loaded
        machine can make one time out) before the session that needs it fails."""
        attempt = 1
        while True:
            directory = self._new_dir()
            try:
                return await PythonKernel.start(self.sandbox_or_fail(), directory)
            except BaseException as exc:
                shutil.rmtree(directory, ignore_errors=True)
                if not isinstance(exc, KernelStartError) or attempt >= KERNEL_START_ATTEMPTS:
                    raise
                logger.warning("kernel start failed (attempt %d), retrying: %s", attempt, exc)
                attempt += 1

    async def _take_kernel(self) -> PythonKernel:
        """A warm kernel when one is ready. Otherwise wait for the next one the refill starts
        (never more than REFILL_CONCURRENCY kernel starts compete for the CPU), or start one
        cold when the pool keeps no warm kernels."""
        while self._warm:
            candidate = self._warm.popleft()
            if candidate.alive:
                # Start the replacement only after this session's first call has had the CPU.
                asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._refill)
                return candidate
            self.spawn(self._discard_kernel(candidate))
        if self.config.warm_sessions == 0:
            return await self._start_kernel()
        waiter: asyncio.Future[PythonKernel] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._refill()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._deliver(waiter.result())  # handed over just as we gave up: pass it on
            raise

    def _deliver(self, kernel: PythonKernel) -> None:
        """A freshly started kernel goes to the longest waiting new session, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(kernel)
                return
        self._warm.append(kernel)

    async def _discard_kernel(self, kernel: PythonKernel) -> None:
        await kernel.shutdown()
        await asyncio.to_thread(shutil.rmtree, kernel.session_dir, True)

    async def _fill_warm_pool(self) -> None:
        """Start-up: fill the warm pool before serving (fails the start if kernels cannot start)."""
        gate = asyncio.Semaphore(REFILL_CONCURRENCY)

        async def one() -> None:
            async with gate:
                self._warm.append(await self._start_kernel())

        async with asyncio.TaskGroup() as group:
            for _ in range(self.config.warm_sessions):
                group.create_task(one())

    def _refill(self) -> None:
        want = self.config.warm_sessions + len(self._waiters)
        while (
            not self._closing
            and len(self._warm) + self._warm_starting < want
            and self._warm_starting < REFILL_CONCURRENCY
        ):
            self._warm_starting += 1
            self.spawn(self._refill_one())

    async def _refill_one(self) -> None:
        try:
            kernel = await self._start_kernel()
        except Exception as exc:
            logger.exception("starting a warm kernel failed")
            # Fail the sessions waiting for it; the next hand-out retries (no hot loop).
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        finally:
            self._warm_starting -= 1
        if self._closing:
            await self._discard_kernel(kernel)
            return
        self._deliver(kernel)
        self._refill()

    # ---- executions (for GET executions/{id}) -------------------------------------------

    def record_execution(self, identifier: str, resource: dict[str, Any]) -> None:
        kept = self._executions.setdefault(identifier, OrderedDict())
        kept[resource["id"]] = resource
        kept.move_to_end(resource["id"])
        while len(kept) > MAX_EXECUTIONS_KEPT or (
            len(kept) > 1 and sum(map(_output_size, kept.values())) > MAX_EXECUTION_OUTPUT_KEPT
        ):
            kept.popitem(last=False)

    def find_execution(self, identifier: str, execution_id: str) -> dict[str, Any] | None:
        kept = self._executions.get(identifier)
        return None if kept is None else kept.get(execution_id)

    # ---- metadata -------------------------------------------------------------------------

    async def _probe(self) -> PoolFacts:
        """Ask the sandboxed interpreter (and bash) for versions and installed packages."""
        sandbox = self.sandbox_or_fail()
        probe_dir = self._new_dir()
        try:
            py = await run_shell(
                sandbox, probe_dir, argv=[sandbox.python, "-c", _PROBE], timeout_s=_PROBE_TIMEOUT_S
            )
            if py.exit_code != 0:
                raise RuntimeError(f"the sandboxed Python interpreter does not run: {py.stderr.strip()}")
            found = json.loads(py.stdout)
            runtimes = [{"name": "python", "version": str(found["python"])}]
            if self.config.pool_type is LocalPoolType.SHELL:
                sh = await run_shell(
                    sandbox, probe_dir, command="echo $BASH_VERSION", timeout_s=_PROBE_TIMEOUT_S
                )
                runtimes.insert(0, {"name": "bash", "version": sh.stdout.strip()})
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        packages = [{"name": str(n), "version": str(v)} for n, v in found["packages"] if n]
        return PoolFacts(runtimes=runtimes, packages=packages, started_at=time.time())


def _output_size(resource: dict[str, Any]) -> int:
    """About how much memory a kept execution holds: its output text."""
    body = resource.get("result") or {}
    return sum(len(str(body.get(key, ""))) for key in ("stdout", "stderr", "executionResult"))
