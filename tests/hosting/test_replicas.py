"""Replicas: with one DSMCP_SESSION_SECRET, any replica serves any sessionless request and reaches
the same sandbox; 2025-era stateful sessions live in one replica (sticky routing or stateless mode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from dynamic_sessions_mcp.config import InboundAuth, Settings
from tests.bridge.helpers import error, ok
from tests.conftest import PoolServer, bridge_settings, serve_bridge
from tests.hosting.conftest import ALICE_KEY, API_KEYS, INIT, MCP_HEADERS, mcp_client

pytestmark = pytest.mark.anyio
AUTH = {"X-API-Key": ALICE_KEY}


def replicas(*settings: Settings) -> Iterator[list[str]]:
    with ExitStack() as stack:
        yield [stack.enter_context(contextmanager(serve_bridge)(s)) for s in settings]


@pytest.fixture(scope="module")
def stateful_pair(python_pool: PoolServer) -> Iterator[list[str]]:
    """Two replicas with the same settings (and so the same session secret), and one with another."""
    shared = bridge_settings(python_pool, auth=InboundAuth.API_KEY, api_keys=API_KEYS)
    stranger = bridge_settings(
        python_pool,
        auth=InboundAuth.API_KEY,
        api_keys=API_KEYS,
        session_secret="another-secret-0123456789abcdef",
    )
    yield from replicas(shared, shared, stranger)


async def test_a_client_alternating_between_replicas_keeps_its_variables(stateful_pair: list[str]) -> None:
    a, b, stranger = stateful_pair
    async with mcp_client(a, AUTH) as on_a, mcp_client(b, AUTH) as on_b:
        handle = ok(await on_a.call_tool("run_python", {"code": "total = 1"}))["session"]
        for step in range(2, 6):
            replica = on_b if step % 2 == 0 else on_a
            result = ok(
                await replica.call_tool("run_python", {"code": "total += 1\ntotal", "session": handle})
            )
            assert (result["result"], result["session"]) == (step, handle)
        ok(await on_b.call_tool("upload_file", {"path": "made-on-b.txt", "content": "b", "session": handle}))
        listing = ok(await on_a.call_tool("list_files", {"session": handle}))
        assert "made-on-b.txt" in str(listing)
    # A replica with another secret cannot read the handle: the secret must be shared.
    async with mcp_client(stranger, AUTH) as elsewhere:
        assert "unknown session handle" in error(
            await elsewhere.call_tool("run_python", {"code": "total", "session": handle})
        )


def test_a_2025_stateful_session_lives_on_one_replica(stateful_pair: list[str]) -> None:
    a, b, _ = stateful_pair
    session_id = httpx.post(a, json=INIT, headers={**MCP_HEADERS, **AUTH}).headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    headers = {**MCP_HEADERS, **AUTH, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"}
    assert httpx.post(a, json=listing, headers=headers).status_code == 200
    # Without sticky routing on Mcp-Session-Id, the next request may land here:
    assert httpx.post(b, json=listing, headers=headers).status_code == 404


def test_stateless_replicas_serve_2025_requests_anywhere(python_pool: PoolServer) -> None:
    settings = bridge_settings(python_pool, auth=InboundAuth.API_KEY, api_keys=API_KEYS, stateless_http=True)
    with contextmanager(replicas)(settings, settings) as (a, b):
        opened = httpx.post(a, json=INIT, headers={**MCP_HEADERS, **AUTH})
        assert opened.status_code == 200 and "mcp-session-id" not in opened.headers
        call = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "new_session", "arguments": {}},
        }
        headers = {**MCP_HEADERS, **AUTH, "mcp-protocol-version": "2025-06-18"}
        answer = httpx.post(b, json=call, headers=headers)
        assert answer.status_code == 200 and '"session"' in answer.text
