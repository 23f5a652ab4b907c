"""Long runs within a client's clock: progress notifications while an execution runs, execution
handles for runs that continue in the background, and polling for their outcome.

An execution handle is `x-` + the session handle's body + kind + random + an HMAC tag: it names
its session, so any replica can serve `get_execution` without a store. The pool's execution id
(the `operation-id` the bridge sends) is derived from the handle and the caller with the same
secret, so the model never sees it and another caller's replay reaches nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from dynamic_sessions_mcp.identity import HANDLE_PREFIX, InvalidHandle
from dynamic_sessions_mcp.pools.base import ExecutionKind

T = TypeVar("T")
logger = logging.getLogger(__name__)

EXECUTION_PREFIX = "x-"
PROGRESS_INTERVAL_S = 3.0
_SESSION_BODY_LEN = 24  # a session handle without its "h-"
_RANDOM_LEN = 10
_TAG_LEN = 10
_KINDS = {"p": ExecutionKind.PYTHON, "s": ExecutionKind.SHELL}
_POLL_FIRST_S = 0.25
_POLL_MAX_S = 2.0


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


@dataclass(frozen=True)
class ExecutionRef:
    handle: str
    session: str  # the session handle it ran in
    kind: ExecutionKind


class ExecutionHandles:
    """Mints and checks execution handles; derives the pool's execution ids."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, *parts: str) -> str:
        return _b32(hmac.new(self._secret, "\0".join(parts).encode(), hashlib.sha256).digest())

    def mint(self, session: str, kind: ExecutionKind) -> str:
        code = next(c for c, k in _KINDS.items() if k is kind)
        body = session[len(HANDLE_PREFIX) :] + code + _b32(secrets.token_bytes(8))[:_RANDOM_LEN]
        return EXECUTION_PREFIX + body + self._mac("execution", body)[:_TAG_LEN]

    def parse(self, handle: str) -> ExecutionRef:
        """The execution a handle names, if this server minted it; InvalidHandle otherwise."""
        handle = handle.strip()
        body_len = _SESSION_BODY_LEN + 1 + _RANDOM_LEN
        body = handle[len(EXECUTION_PREFIX) : len(EXECUTION_PREFIX) + body_len]
        if (
            not handle.startswith(EXECUTION_PREFIX)
            or len(handle) != len(EXECUTION_PREFIX) + body_len + _TAG_LEN
            or body[_SESSION_BODY_LEN] not in _KINDS
            or not hmac.compare_digest(self._mac("execution", body)[:_TAG_LEN], handle[-_TAG_LEN:])
        ):
            raise InvalidHandle(handle)
        return ExecutionRef(handle, HANDLE_PREFIX + body[:_SESSION_BODY_LEN], _KINDS[body[_SESSION_BODY_LEN]])

    def operation_id(self, caller: str, handle: str) -> str:
        """The id the pool knows the execution by: `[a-z0-9-]`, meaningless without the secret."""
        return "dsmcp-x-" + self._mac("operation", caller, handle)[:32]

    def spill_id(self, handle: str) -> str:
        """A stable name for the execution's output files, so fetching twice overwrites them."""
        return self._mac("spill", handle)[:10]


Report = Callable[[float, float | None, str], Awaitable[None]]


async def _tell(report: Report, progress: float, total: float | None, message: str) -> None:
    """Progress is a courtesy: a client that cannot take it must not fail the run."""
    try:
        await report(progress, total, message)
    except Exception as exc:
        logger.debug("progress notification not sent: %s", exc)


@dataclass
class _Running:
    report: Report
    total_s: float
    started: float
    last_report: float


class ProgressTicker:
    """Progress for every running call from one task.

    A ticker task per call (task group, spawn, cancel) cost 250 us of CPU per tool call, most of
    which never ran past the first interval; registering with one shared ticker costs a dict entry.
    """

    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._running: dict[int, _Running] = {}
        self._next_id = 0

    async def run(self) -> None:
        """Report, every interval, on the calls running that long; forever (cancel to stop)."""
        async with anyio.create_task_group() as sends:
            while True:
                await anyio.sleep(self._interval_s / 4)
                now = time.monotonic()
                for call in list(self._running.values()):
                    if now - call.last_report >= self._interval_s:
                        call.last_report = now
                        elapsed = now - call.started
                        message = f"running for {elapsed:.0f} s"
                        # One task per report, so a slow client delays only its own progress.
                        sends.start_soon(_tell, call.report, elapsed, call.total_s, message)

    async def around(self, report: Report, total_s: float, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work`, reporting progress every interval while it runs (clients reset idle timers on it)."""
        key = self._next_id
        self._next_id += 1
        now = time.monotonic()
        self._running[key] = _Running(report, total_s, now, now)
        try:
            return await work()
        finally:
            del self._running[key]


async def poll(
    check: Callable[[], Awaitable[T | None]],
    deadline: float,
    report: Report,
    started: float,
    total_s: float,
) -> T | None:
    """Call `check` with growing pauses until it gives a value or `deadline` (monotonic) passes;
    report progress every few seconds meanwhile."""
    pause = _POLL_FIRST_S
    last_report = time.monotonic()
    while True:
        value = await check()
        now = time.monotonic()
        if value is not None or now >= deadline:
            return value
        if now - last_report >= PROGRESS_INTERVAL_S:
            last_report = now
            await _tell(report, now - started, total_s, f"running for {now - started:.0f} s")
        await anyio.sleep(min(pause, max(0.0, deadline - now)))
        pause = min(_POLL_MAX_S, pause * 2)


def handoff_margin_s(budget_s: float) -> float:
    """Time kept back from the call budget to shape and send the answer."""
    return min(5.0, budget_s * 0.2)
