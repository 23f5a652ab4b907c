"""Hosting fixtures: bridges behind API-key auth on loopback, and MCP clients that send credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from dynamic_sessions_mcp.config import InboundAuth
from tests.conftest import PoolServer, bridge_settings, serve_bridge

ALICE_KEY = "alice-key-5f0c1d9e8b7a6f4e3d2c"
BOB_KEY = "bob-key-0a1b2c3d4e5f60718293a4"
API_KEYS = f"alice:{ALICE_KEY},bob:{BOB_KEY}"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
RequestHook = Callable[[httpx2.Request], Awaitable[None]]
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@asynccontextmanager
async def mcp_client(
    url: str, headers: dict[str, str], mode: str = "auto", on_request: RequestHook | None = None
) -> AsyncIterator[Client]:
    """An MCP client that sends `headers` (credentials) on every request."""
    hooks = {"request": [on_request]} if on_request else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60, event_hooks=hooks) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def api_key_bridge(python_pool: PoolServer) -> Iterator[str]:
    """A bridge requiring API keys (alice, bob); yields the /mcp URL."""
    yield from serve_bridge(bridge_settings(python_pool, auth=InboundAuth.API_KEY, api_keys=API_KEYS))
