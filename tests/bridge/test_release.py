"""Pool sessions are released when their owner is done: end_session, and the stdio process
ending on SIGTERM (checked on the pool's side, with GET session)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from mcp import Client
from mcp.server import MCPServer

from dynamic_sessions_mcp.identity import SessionIdentity
from tests.bridge.helpers import ok
from tests.bridge.test_tour import stdio_params
from tests.conftest import SESSION_SECRET, PoolServer

pytestmark = pytest.mark.anyio
IDENTITY = SessionIdentity(SESSION_SECRET.encode())


async def test_end_session_deletes_the_pool_session(bridge: MCPServer, python_pool: PoolServer) -> None:
    async with Client(bridge) as client:
        handle = ok(await client.call_tool("new_session", {}))["session"]
        ok(await client.call_tool("run_python", {"code": "a = 1", "session": handle}))
        identifier = IDENTITY.pool_identifier("local", handle)
        assert python_pool.session_exists(identifier)
        ok(await client.call_tool("end_session", {"session": handle}))
        assert not python_pool.session_exists(identifier)


def rpc(proc: subprocess.Popen[str], message: dict[str, Any]) -> dict[str, Any] | None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()
    if "id" not in message:
        return None
    while True:
        line = proc.stdout.readline()
        assert line, "the server closed stdout"
        reply: dict[str, Any] = json.loads(line)
        if reply.get("id") == message["id"]:
            return reply


def test_sigterm_on_stdio_releases_the_session(python_pool: PoolServer) -> None:
    params = stdio_params(python_pool)
    proc = subprocess.Popen(
        [params.command, *params.args],
        env=params.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        assert rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init})
        rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "run_python", "arguments": {"code": "b = 2"}}
        reply = rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        assert reply is not None and not reply["result"]["isError"]
        identifier = IDENTITY.pool_identifier("local", reply["result"]["structuredContent"]["session"])
        assert python_pool.session_exists(identifier)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not python_pool.session_exists(identifier)
    finally:
        if proc.poll() is None:
            proc.kill()
        if sys.exc_info()[0] is None:
            assert proc.returncode == 0
