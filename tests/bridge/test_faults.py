"""Pool failures reach the agent as clear tool errors, through the MCP protocol: a fault-injecting
pool (over HTTP, in front of the real local pool) answers with each error status, slowly, or
drops the connection. Nothing hangs, nothing leaks the pool credential."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from mcp import Client
from mcp.server import MCPServer

from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from tests.bridge.helpers import error, ok
from tests.conftest import PoolServer, bridge_settings
from tests.support.fault_pool import FaultPool
from tests.support.serve import serve_in_thread

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def faults(python_pool: PoolServer) -> Iterator[tuple[FaultPool, PoolServer]]:
    fault_pool = FaultPool(python_pool.url)
    with serve_in_thread(fault_pool.app) as url:
        yield fault_pool, PoolServer(url, python_pool.token)


@pytest.fixture
async def faulty_bridge(faults: tuple[FaultPool, PoolServer]) -> AsyncIterator[tuple[MCPServer, FaultPool]]:
    fault_pool, server = faults
    fault_pool.clear()
    settings = bridge_settings(server, pool_request_timeout_s=2.0, pool_retry_budget_s=3.0)
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as mcp:
        yield mcp, fault_pool
    fault_pool.clear()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "rejected"),
        (401, "DSMCP_POOL"),
        (403, "Session Executor"),
        (404, "concurrent sessions"),
        (413, "128"),
        (429, "busy"),
        (500, "500"),
        (502, "502"),
        (503, "busy"),
    ],
)
async def test_execution_errors_become_actionable_tool_errors(
    faulty_bridge: tuple[MCPServer, FaultPool], status: int, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    mcp, fault_pool = faulty_bridge
    fault_pool.inject("POST", "/executions", status=status, times=None)
    caplog.set_level(logging.DEBUG)
    async with Client(mcp) as client:
        with anyio.fail_after(20):
            message = error(await client.call_tool("run_python", {"code": "1"}))
    assert expected.lower() in message.lower(), message
    assert "session h-" in message
    executions = [r for r in fault_pool.requests if r == ("POST", "/executions")]
    assert len(executions) == 1, "an execution must never be retried once it may have reached the pool"
    assert fault_pool.upstream is not None
    for secret in ("test-pool-token-7f3a9c",):
        assert secret not in message and secret not in caplog.text


async def test_throttled_listing_is_retried_and_succeeds(faulty_bridge: tuple[MCPServer, FaultPool]) -> None:
    mcp, fault_pool = faulty_bridge
    fault_pool.inject("GET", "/files", status=429, headers={"Retry-After": "1"}, times=1)
    async with Client(mcp) as client:
        with anyio.fail_after(20):
            ok(await client.call_tool("list_files", {}))
    assert [r for r in fault_pool.requests if r == ("GET", "/files")] == [("GET", "/files")] * 2


async def test_slow_pool_times_out_with_a_clear_error(faulty_bridge: tuple[MCPServer, FaultPool]) -> None:
    mcp, fault_pool = faulty_bridge
    fault_pool.inject("GET", "/files", delay_s=30, times=None)
    async with Client(mcp) as client:
        with anyio.fail_after(20):
            message = error(await client.call_tool("list_files", {}))
    assert "time" in message.lower()


async def test_dropped_connection_is_reported(faulty_bridge: tuple[MCPServer, FaultPool]) -> None:
    mcp, fault_pool = faulty_bridge
    fault_pool.inject("POST", "/executions", drop=True)
    async with Client(mcp) as client:
        with anyio.fail_after(20):
            message = error(await client.call_tool("run_python", {"code": "1"}))
        assert "connection" in message.lower()
        assert ok(await client.call_tool("run_python", {"code": "6*7"}))["result"] == 42


async def test_unreachable_pool_is_reported(python_pool: PoolServer) -> None:
    """The pool goes away after the bridge connected: connection refused, no hang."""
    fault_pool = FaultPool(python_pool.url)
    server = serve_in_thread(fault_pool.app)
    url = server.__enter__()
    settings = bridge_settings(PoolServer(url, python_pool.token), pool_retry_budget_s=1.0)
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as mcp, Client(mcp) as client:
        ok(await client.call_tool("run_python", {"code": "1"}))
        server.__exit__(None, None, None)
        with anyio.fail_after(20):
            message = error(await client.call_tool("run_python", {"code": "1"}))
            assert "connect" in message.lower()
            message = error(await client.call_tool("list_files", {}))
            assert "connect" in message.lower()
