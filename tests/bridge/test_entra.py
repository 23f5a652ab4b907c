"""Entra ID auth through the bridge: the token is fetched once for many concurrent tool calls and
refreshed before it expires. The credential is a stand-in for azure-identity's (it counts its
calls); everything else is real: MCP client, bridge, HTTP, and the local pool checking the bearer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import anyio
import pytest
from mcp import Client

from dynamic_sessions_mcp.pools.credentials import EntraTokenAuth
from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from tests.bridge.helpers import ok
from tests.conftest import POOL_TOKEN, PoolServer, bridge_settings

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Token:
    token: str
    expires_on: int


class CountingCredential:
    """Hands out the pool's token with the given lifetimes; counts get_token calls."""

    def __init__(self, *lifetimes_s: float) -> None:
        self.lifetimes_s = lifetimes_s
        self.calls = 0
        self.scopes: set[tuple[str, ...]] = set()

    async def get_token(self, *scopes: str, **kwargs: object) -> Token:
        self.calls += 1
        self.scopes.add(scopes)
        await asyncio.sleep(0.05)  # slow enough for concurrent callers to pile up
        lifetime = self.lifetimes_s[min(self.calls, len(self.lifetimes_s)) - 1]
        return Token(POOL_TOKEN, int(time.time() + lifetime))

    async def close(self) -> None:
        pass


async def test_100_concurrent_tool_calls_fetch_one_token(python_pool: PoolServer) -> None:
    credential = CountingCredential(3600)
    settings = bridge_settings(python_pool)
    auth = EntraTokenAuth(credential)
    results: list[bool] = []
    async with (
        open_bridge(settings, PoolTarget.from_settings(settings), pool_auth=auth) as mcp,
        Client(mcp) as client,
    ):

        async def call() -> None:
            results.append(not (await client.call_tool("list_files", {})).is_error)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(call)
    assert results == [True] * 100
    assert credential.calls == 1
    assert credential.scopes == {("https://dynamicsessions.io/.default",)}


async def test_a_token_close_to_expiry_is_refreshed_before_use(python_pool: PoolServer) -> None:
    credential = CountingCredential(120, 3600)  # the first expires inside the 5-minute margin
    settings = bridge_settings(python_pool)
    async with (
        open_bridge(
            settings, PoolTarget.from_settings(settings), pool_auth=EntraTokenAuth(credential)
        ) as mcp,
        Client(mcp) as client,
    ):
        ok(await client.call_tool("run_python", {"code": "1"}))
        assert credential.calls == 1
        ok(await client.call_tool("run_python", {"code": "2"}))
        assert credential.calls == 2
        ok(await client.call_tool("run_python", {"code": "3"}))
        assert credential.calls == 2
