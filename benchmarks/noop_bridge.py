"""The production server (`dynamic-sessions-mcp`, same arguments) plus one tool, `noop`.

The no-op tool is the protocol floor: it shares the server, transport, auth and middleware with
the real tools and does nothing, so `run_python` minus `noop` is what forwarding to a pool costs.

    .venv/bin/python benchmarks/noop_bridge.py --transport http --port 8000
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server import MCPServer

from dynamic_sessions_mcp import cli, http_app, server


async def noop() -> str:
    return "ok"


@asynccontextmanager
async def bridge_with_noop(*args: Any, **kwargs: Any) -> AsyncIterator[MCPServer]:
    async with server.open_bridge(*args, **kwargs) as mcp:
        mcp.tool(name="noop")(noop)
        yield mcp


if __name__ == "__main__":
    cli.open_bridge = bridge_with_noop  # type: ignore[assignment]
    http_app.open_bridge = bridge_with_noop  # type: ignore[assignment]
    cli.main()
