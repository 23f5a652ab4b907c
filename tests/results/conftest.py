"""Bridges for the result/transfer/long-run tests: served over real HTTP on a known port (so the
signed URLs they mint point back at them), each on the shared local pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from dynamic_sessions_mcp.config import Settings
from dynamic_sessions_mcp.http_app import create_bridge_app
from dynamic_sessions_mcp.identity import SessionIdentity
from dynamic_sessions_mcp.server import PoolTarget
from tests.conftest import SESSION_SECRET, PoolServer, bridge_settings
from tests.support.serve import free_port, serve_in_thread


@dataclass(frozen=True)
class WebBridge:
    url: str  # the /mcp endpoint
    base: str  # the public URL signed links start with
    settings: Settings


@contextmanager
def web_bridge(pool: PoolServer, **overrides: object) -> Iterator[WebBridge]:
    """A bridge over streamable HTTP whose DSMCP_PUBLIC_URL is its own loopback address."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = bridge_settings(pool, public_url=base, **overrides)

    @asynccontextmanager
    async def target() -> AsyncIterator[PoolTarget]:
        yield PoolTarget.from_settings(settings)

    with serve_in_thread(create_bridge_app(settings, target), port=port) as served:
        yield WebBridge(served + "/mcp", base, settings)


def http_identifier(handle: str) -> str:
    """The pool identifier an unauthenticated HTTP caller's handle maps to."""
    return SessionIdentity(SESSION_SECRET.encode()).pool_identifier("anonymous", handle)
