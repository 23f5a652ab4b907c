"""Every tool, through the MCP protocol, on every transport and in both protocol eras, over both pool
backends (the REST data plane and the pool's built-in MCP endpoint), against the real local pool
over HTTP."""

from __future__ import annotations

import base64
import os
import sys

import pytest
from mcp import Client, StdioServerParameters
from mcp.server import MCPServer

from dynamic_sessions_mcp.identity import SessionIdentity
from tests.bridge.helpers import error, ok, text
from tests.conftest import BACKENDS, SESSION_SECRET, PoolServer

pytestmark = pytest.mark.anyio
ERAS = ["auto", "legacy"]  # auto lands on 2026-07-28; legacy does the 2025-11-25 handshake


def stdio_params(pool: PoolServer, backend: str = "rest", **env: str) -> StdioServerParameters:
    if backend == "mcp-endpoint":
        assert pool.mcp_key is not None
        reach = {
            "DSMCP_POOL_ENDPOINT": pool.mcp_url,
            "DSMCP_POOL_AUTH": "api-key",
            "DSMCP_POOL_API_KEY": pool.mcp_key,
        }
    else:
        reach = {"DSMCP_POOL_ENDPOINT": pool.url, "DSMCP_POOL_AUTH": "token", "DSMCP_POOL_TOKEN": pool.token}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "dynamic_sessions_mcp"],
        env={
            **os.environ,
            **reach,
            "DSMCP_POOL_TYPE": "python",
            "DSMCP_SESSION_SECRET": SESSION_SECRET,
            **env,
        },
    )


async def tour(client: Client) -> str:
    """Exercise every tool; return the session handle used. Passing the handle back explicitly
    keeps state on every era, including sessionless 2026-07-28 HTTP."""
    first = ok(await client.call_tool("run_python", {"code": "x = 41\nprint('hello')\nx"}))
    handle = first["session"]
    assert first["stdout"] == "hello\n" and first["result"] == 41 and first["status"] == "succeeded"
    second = ok(await client.call_tool("run_python", {"code": "x + 1", "session": handle}))
    assert second["result"] == 42 and second["session"] == handle

    shell = ok(
        await client.call_tool("run_shell", {"command": "echo out; echo err >&2; exit 3", "session": handle})
    )
    assert (shell["exit_code"], shell["stdout"], shell["stderr"]) == (3, "out\n", "err\n")
    assert shell["status"] == "failed"

    up = ok(
        await client.call_tool(
            "upload_file", {"path": "dir/notes.txt", "content": "héllo", "session": handle}
        )
    )
    assert up == {"session": handle, "path": "/mnt/data/dir/notes.txt", "size": 6, "content_type": ""}
    blob = bytes(range(256))
    encoded = base64.b64encode(blob).decode()
    ok(
        await client.call_tool(
            "upload_file",
            {"path": "/mnt/data/b.bin", "content": encoded, "encoding": "base64", "session": handle},
        )
    )
    seen = ok(
        await client.call_tool("run_python", {"code": "open('dir/notes.txt').read()", "session": handle})
    )
    assert seen["result"] == "héllo"

    listing = ok(await client.call_tool("list_files", {"recursive": True, "session": handle}))
    paths = {f["path"]: f for f in listing["files"]}
    assert paths["/mnt/data/dir/notes.txt"]["size"] == 6 and paths["/mnt/data/b.bin"]["size"] == 256

    down = await client.call_tool("download_file", {"path": "dir/notes.txt", "session": handle})
    assert ok(down)["size"] == 6 and text(down).endswith("\nhéllo")
    down = await client.call_tool("download_file", {"path": "b.bin", "session": handle})
    resource = down.content[1]
    assert resource.type == "resource" and base64.b64decode(resource.resource.blob) == blob

    ended = ok(await client.call_tool("end_session", {"session": handle}))
    assert ended == {"session": handle, "ended": True}
    fresh = await client.call_tool("run_python", {"code": "x", "session": handle})
    assert "NameError" in ok(fresh)["stderr"]
    return handle


@pytest.mark.parametrize("era", ERAS)
async def test_in_memory(backend_bridge: MCPServer, era: str) -> None:
    async with Client(backend_bridge, mode=era) as client:
        await tour(client)


@pytest.mark.parametrize("era", ERAS)
async def test_streamable_http(backend_http_bridge: str, era: str) -> None:
    async with Client(backend_http_bridge, mode=era) as client:
        await tour(client)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
async def test_stdio(python_pool: PoolServer, era: str, backend: str) -> None:
    async with Client(stdio_params(python_pool, backend), mode=era) as client:
        await tour(client)


async def test_connection_session_is_default_on_stdio(python_pool: PoolServer) -> None:
    """Without a handle, a stdio client keeps one sandbox; closing the client releases it."""
    async with Client(stdio_params(python_pool)) as client:
        a = ok(await client.call_tool("run_python", {"code": "y = 'kept'"}))
        b = ok(await client.call_tool("run_python", {"code": "y"}))
        assert b["result"] == "kept" and a["session"] == b["session"]
        identifier = SessionIdentity(SESSION_SECRET.encode()).pool_identifier("local", a["session"])
        assert python_pool.session_exists(identifier)
    assert not python_pool.session_exists(identifier)


async def test_connection_session_on_2025_http_is_released_when_it_ends(
    http_bridge: str, python_pool: PoolServer
) -> None:
    async with Client(http_bridge, mode="legacy") as client:
        a = ok(await client.call_tool("run_python", {"code": "z = 5"}))
        b = ok(await client.call_tool("run_python", {"code": "z * 2"}))
        assert b["result"] == 10 and a["session"] == b["session"]
        identifier = SessionIdentity(SESSION_SECRET.encode()).pool_identifier("anonymous", a["session"])
        assert python_pool.session_exists(identifier)
    assert not python_pool.session_exists(identifier)


async def test_sessionless_http_mints_a_fresh_handle_per_call_without_one(http_bridge: str) -> None:
    async with Client(http_bridge) as client:
        assert client.protocol_version == "2026-07-28"
        a = ok(await client.call_tool("run_python", {"code": "w = 1"}))
        b = await client.call_tool("run_python", {"code": "w"})
        assert a["session"] != ok(b)["session"] and "NameError" in ok(b)["stderr"]
        assert a["session"].startswith("h-") and f"session {ok(b)['session']}" in text(b)


async def test_two_clients_are_isolated(bridge: MCPServer, http_bridge: str) -> None:
    async with Client(bridge) as one, Client(http_bridge, mode="legacy") as two:
        ok(await one.call_tool("run_python", {"code": "secret = 'one'"}))
        ok(await one.call_tool("upload_file", {"path": "mine.txt", "content": "one"}))
        other = ok(await two.call_tool("run_python", {"code": "secret"}))
        assert "NameError" in other["stderr"]
        files = ok(await two.call_tool("list_files", {}))
        assert "/mnt/data/mine.txt" not in {f["path"] for f in files["files"]}


async def test_handle_replayed_by_another_caller_reaches_another_sandbox(
    bridge: MCPServer, http_bridge: str
) -> None:
    """The same handle from the stdio caller ('local') and an HTTP caller ('anonymous')."""
    async with Client(http_bridge) as http_client, Client(bridge) as local_client:
        handle = ok(await http_client.call_tool("run_python", {"code": "owner = 'http'"}))["session"]
        replay = ok(await local_client.call_tool("run_python", {"code": "owner", "session": handle}))
        assert replay["session"] == handle and "NameError" in replay["stderr"]
        again = ok(await http_client.call_tool("run_python", {"code": "owner", "session": handle}))
        assert again["result"] == "http"


async def test_made_up_handle_is_refused(bridge: MCPServer) -> None:
    async with Client(bridge) as client:
        message = error(
            await client.call_tool("run_python", {"code": "1", "session": "h-aaaaaaaaaaaaaaaaaaaaaaaa"})
        )
        assert "unknown session handle" in message and "new_session" in message


async def test_new_session_gives_a_separate_sandbox(bridge: MCPServer) -> None:
    async with Client(bridge) as client:
        ok(await client.call_tool("run_python", {"code": "v = 'default'"}))
        handle = ok(await client.call_tool("new_session", {}))["session"]
        other = ok(await client.call_tool("run_python", {"code": "v", "session": handle}))
        assert "NameError" in other["stderr"]
        assert ok(await client.call_tool("run_python", {"code": "v"}))["result"] == "default"
