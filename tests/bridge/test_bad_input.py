"""Every bad input gets a clear tool error that says what to do next, and nothing breaks."""

from __future__ import annotations

import base64

import anyio
import pytest
from mcp import Client
from mcp.server import MCPServer

from dynamic_sessions_mcp.config import Settings
from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from tests.bridge.helpers import error, ok, text
from tests.conftest import PoolServer, bridge_settings

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("run_python", {"code": 123}, "code"),
        ("run_python", {}, "code"),
        ("run_python", {"code": "1", "timeout_seconds": "soon"}, "timeout_seconds"),
        ("run_python", {"code": "1", "timeout_seconds": 999}, "timeout_seconds"),
        ("run_shell", {"command": ["ls"]}, "command"),
        ("upload_file", {"path": "a.txt"}, "content"),
        ("upload_file", {"path": "a.txt", "content": "x", "encoding": "rot13"}, "encoding"),
        ("list_files", {"recursive": "deep"}, "recursive"),
    ],
)
async def test_wrong_types_are_refused_by_the_schema(
    bridge: MCPServer, tool: str, args: dict, expected: str
) -> None:
    async with Client(bridge) as client:
        assert expected in error(await client.call_tool(tool, args))


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "/etc/passwd",
        "/mnt/data/../../etc/passwd",
        "a/../../b",
        "/mnt/database/x",
        "a\\..\\b",
        "a\0b",
    ],
)
async def test_paths_outside_mnt_data_are_refused(bridge: MCPServer, path: str) -> None:
    async with Client(bridge) as client:
        for tool, args in [
            ("upload_file", {"path": path, "content": "x"}),
            ("download_file", {"path": path}),
            ("list_files", {"path": path}),
        ]:
            message = error(await client.call_tool(tool, args))
            assert "/mnt/data" in message or "not allowed" in message


async def test_upload_and_download_need_a_file_name(bridge: MCPServer) -> None:
    async with Client(bridge) as client:
        assert "name a file" in error(
            await client.call_tool("upload_file", {"path": "/mnt/data", "content": "x"})
        )
        assert "name a file" in error(await client.call_tool("download_file", {"path": ""}))


async def test_bad_base64_is_refused(bridge: MCPServer) -> None:
    async with Client(bridge) as client:
        message = error(
            await client.call_tool("upload_file", {"path": "a.bin", "content": "!!", "encoding": "base64"})
        )
        assert "not valid base64" in message


async def test_unknown_file_says_so(bridge: MCPServer) -> None:
    async with Client(bridge) as client:
        message = error(await client.call_tool("download_file", {"path": "nope/missing.txt"}))
        assert "missing.txt" in message and "session h-" in message


async def test_oversize_upload_is_refused_and_download_becomes_a_link(python_pool: PoolServer) -> None:
    settings = bridge_settings(python_pool, max_upload_bytes=1000, max_download_bytes=1000)
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as mcp, Client(mcp) as client:
        big = base64.b64encode(b"x" * 1001).decode()
        message = error(
            await client.call_tool("upload_file", {"path": "big", "content": big, "encoding": "base64"})
        )
        assert "1001 bytes" in message and "limit is 1000" in message
        ok(await client.call_tool("run_python", {"code": "open('big.txt', 'w').write('y' * 5000)"}))
        link = await client.call_tool("download_file", {"path": "big.txt"})
        assert ok(link)["attached"] is False and ok(link)["size"] == 5000
        assert "5,000 bytes" in text(link) and "run_python" in text(link)
        assert [block.type for block in link.content] == ["text", "resource_link"]


async def test_runaway_code_is_stopped_and_the_reset_is_reported(bridge: MCPServer) -> None:
    async with Client(bridge) as client:
        ok(await client.call_tool("run_python", {"code": "kept = 1"}))
        with anyio.fail_after(30):
            stopped = ok(
                await client.call_tool("run_python", {"code": "while True: pass", "timeout_seconds": 2})
            )
        assert stopped["status"] == "failed"
        after = ok(await client.call_tool("run_python", {"code": "'kept' in globals()"}))
        assert after["result"] is False
        assert "variables and files were reset" in after["notice"]


async def test_a_busy_session_gives_a_clear_error(settings: Settings) -> None:
    busy = settings.model_copy(update={"busy_wait_s": 0.3})
    async with open_bridge(busy, PoolTarget.from_settings(busy)) as mcp, Client(mcp) as client:
        ok(await client.call_tool("run_python", {"code": "import time"}))
        messages: list[str] = []

        async def slow() -> None:
            ok(await client.call_tool("run_python", {"code": "time.sleep(2)"}))

        async def impatient() -> None:
            await anyio.sleep(0.3)
            messages.append(error(await client.call_tool("run_python", {"code": "1"})))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            tg.start_soon(impatient)
        assert "busy" in messages[0] and "new_session" in messages[0]
