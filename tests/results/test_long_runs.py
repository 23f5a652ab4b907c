"""Long runs within the client's clock, through the protocol against the local pool: progress
notifications during a run, a run longer than the call budget handed over to a background
execution whose result is fetched later, and a client's cancellation stopping the run.

The issue's scenario is a 120 s run under a 50 s budget. By default it is scaled by 0.06 (a 7.2 s
run under a 3 s budget) to keep the suite fast; DSMCP_LONG_RUN_SCALE=1 runs it literally.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import anyio
import pytest
from mcp import Client
from mcp.server import MCPServer

from dynamic_sessions_mcp.long_runs import ExecutionHandles
from tests.bridge.helpers import error, ok, text
from tests.conftest import SESSION_SECRET, PoolServer
from tests.results.conftest import WebBridge, http_identifier, web_bridge

pytestmark = pytest.mark.anyio

SCALE = float(os.environ.get("DSMCP_LONG_RUN_SCALE", "0.06"))
BUDGET_S = 50 * SCALE
RUN_S = 120 * SCALE
ENDLESS = "import time\nwhile True:\n    time.sleep(0.1)"


@pytest.fixture(scope="module")
def web(python_pool: PoolServer) -> Iterator[WebBridge]:
    with web_bridge(python_pool) as bridge:
        yield bridge


@pytest.fixture(scope="module")
def short(python_pool: PoolServer) -> Iterator[WebBridge]:
    with web_bridge(python_pool, call_budget_s=BUDGET_S) as bridge:
        yield bridge


async def test_progress_notifications_arrive_during_a_ten_second_run(web: WebBridge) -> None:
    seen: list[tuple[float, float | None, str | None, float]] = []
    started = time.monotonic()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message, time.monotonic() - started))

    async with Client(web.url) as client:
        code = "import time\ntime.sleep(10)\n'done'"
        data = ok(await client.call_tool("run_python", {"code": code}, progress_callback=on_progress))
    assert data["result"] == "done"
    assert len(seen) >= 3, seen  # about every 3 s
    assert all(message and message.startswith("running for") for _, _, message, _ in seen)
    assert [p for p, *_ in seen] == sorted(p for p, *_ in seen) and seen[0][1] == 50
    assert seen[0][3] < 5 and seen[-1][3] < 10.5  # they arrive while the code runs


async def test_a_run_longer_than_the_budget_returns_a_handle_fetched_later(
    short: WebBridge, bridge: MCPServer
) -> None:
    code = f"import time\ntime.sleep({RUN_S})\nprint('slept')\n42"
    timeout = min(220, int(RUN_S) + 30)
    async with Client(short.url) as client:
        handle = ok(await client.call_tool("new_session", {}))["session"]
        started = time.monotonic()
        first = await client.call_tool(
            "run_python", {"code": code, "session": handle, "timeout_seconds": timeout}
        )
        assert time.monotonic() - started < BUDGET_S
        data = ok(first)
        execution = data["execution"]
        assert data["status"] == "running" and data["exit_code"] == -1 and execution.startswith("x-")
        assert f'execution "{execution}"' in text(first) and "get_execution" in text(first)
        # The handle is the server's own: the pool's execution id never reaches the model.
        operation = ExecutionHandles(SESSION_SECRET.encode()).operation_id("anonymous", execution)
        assert operation not in text(first) and operation not in str(data)

        busy = error(await client.call_tool("run_python", {"code": "1", "session": handle}))
        assert execution in busy and "get_execution" in busy
        look = ok(await client.call_tool("get_execution", {"execution": execution}))
        assert look["status"] == "running"

        calls = 0
        while True:  # each wait stays within the budget
            calls += 1
            call_started = time.monotonic()
            got = ok(await client.call_tool("get_execution", {"execution": execution, "wait_seconds": 600}))
            assert time.monotonic() - call_started < BUDGET_S + 1
            if got["status"] != "running":
                break
        assert got["status"] == "succeeded" and got["stdout"] == "slept\n" and got["result"] == 42
        assert got["session"] == handle and got["execution"] == execution
        assert time.monotonic() - started >= RUN_S and calls >= 2
        after = ok(await client.call_tool("run_python", {"code": "'free'", "session": handle}))
        assert after["result"] == "free"
        again = ok(await client.call_tool("get_execution", {"execution": execution}))
        assert again["result"] == 42  # the outcome stays fetchable

    async with Client(bridge) as other:  # another caller cannot reach it
        message = error(await other.call_tool("get_execution", {"execution": execution}))
        assert "does not know this execution" in message
        message = error(await other.call_tool("get_execution", {"execution": execution[:-1] + "q"}))
        assert "unknown execution handle" in message


@pytest.mark.parametrize(
    ("mode", "era"), [("synchronous", "auto"), ("synchronous", "legacy"), ("background", "auto")]
)
async def test_a_cancelled_call_stops_its_run(
    web: WebBridge, short: WebBridge, python_pool: PoolServer, mode: str, era: str
) -> None:
    """2026-07-28 cancels by closing the request stream, 2025-11-25 by notifications/cancelled."""
    bridge = web if mode == "synchronous" else short
    async with Client(bridge.url, mode=era) as client:
        handle = ok(await client.call_tool("new_session", {}))["session"]
        ok(await client.call_tool("run_python", {"code": "kept = 1", "session": handle}))
        identifier = http_identifier(handle)
        assert python_pool.session_exists(identifier)
        with anyio.move_on_after(1.5) as scope:
            await client.call_tool("run_python", {"code": ENDLESS, "session": handle, "timeout_seconds": 40})
        assert scope.cancelled_caught
        # The bridge ended the pool session: the only sure way to stop the run.
        with anyio.fail_after(10):
            while python_pool.session_exists(identifier):
                await anyio.sleep(0.2)
        with anyio.fail_after(10):
            after = ok(await client.call_tool("run_python", {"code": "'after'", "session": handle}))
        assert after["result"] == "after" and "reset" in after["notice"]
