"""Readiness: can this replica reach the pool with a credential the pool accepts?

The probe ends a session that never exists (`DELETE session` on a fixed identifier): it needs the
same credential as real calls, allocates nothing on the pool, and works on every api-version.
Answers are cached for a few seconds and concurrent probes share one pool request, so a busy
load balancer cannot turn readiness checks into pool load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from dynamic_sessions_mcp.pools.base import Pool, PoolError

logger = logging.getLogger(__name__)

PROBE_IDENTIFIER = "dsmcp-readiness-probe"
CACHE_S = 5.0
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ReadyState:
    ready: bool
    # Why not: a PoolErrorKind value ("auth", "connection", ...), "timeout" or "starting".
    reason: str = ""
    # The pool error's message: for the log only, not for unauthenticated /readyz callers.
    detail: str = field(default="", compare=False)


class Readiness:
    """Cached pool probe. `pool` is set once the bridge has connected."""

    def __init__(self, cache_s: float = CACHE_S, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.pool: Pool | None = None
        self._cache_s = cache_s
        self._timeout_s = timeout_s
        self._last: tuple[float, ReadyState] | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> ReadyState:
        if self.pool is None:
            return ReadyState(False, "starting")
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self._cache_s:
                return self._last[1]
            state = await self._probe(self.pool)
            if self._last is None or state != self._last[1]:
                if state.ready:
                    logger.info("readiness: the pool answers")
                else:
                    logger.warning("readiness: not ready (%s) %s", state.reason, state.detail)
            self._last = (time.monotonic(), state)
            return state

    async def _probe(self, pool: Pool) -> ReadyState:
        try:
            await asyncio.wait_for(pool.end_session(PROBE_IDENTIFIER), self._timeout_s)
        except TimeoutError:
            return ReadyState(False, "timeout", f"the pool did not answer within {self._timeout_s:.0f} s")
        except PoolError as exc:
            return ReadyState(False, exc.kind.value, exc.message)
        return ReadyState(True)
