"""One local Python pool with a short cooldown, behind several emulated MCP endpoints on one port:
today's tool set, the two preview sets, one with tight limits (it cuts long output and refuses large
requests), and a stranger's MCP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dynamic_sessions_mcp.local_pool.app import PoolApi
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig
from dynamic_sessions_mcp.local_pool.mcp_emulation import McpEmulation
from dynamic_sessions_mcp.local_pool.sessions import SessionRegistry
from dynamic_sessions_mcp.pools.base import PoolType
from dynamic_sessions_mcp.pools.mcp_endpoint import McpEndpointPool, connect_mcp_endpoint_pool
from tests.support.serve import serve_in_thread

MCP_KEY = "short-cooldown-mcp-key-1c9e"
COOLDOWN_S = 3.0
CUT_AT = 64 * 1024  # bytes of stdout/stderr the /tight endpoint keeps
MAX_REQUEST = 300 * 1024  # bytes of request body the /tight endpoint accepts


@dataclass(frozen=True)
class Endpoints:
    base: str

    def url(self, variant: str = "") -> str:
        """`variant`: "" (today's tools), "preview-python", "preview-shell", "tight" or "other"."""
        return f"{self.base}/{variant}/mcp" if variant else f"{self.base}/mcp"


class Stranger:
    """An MCP server that is not a session pool's: it offers tools of its own. It also behaves as a
    full MCP server may: it hands out Mcp-Session-Id values, forgets the first one (404), and
    answers tools/list as an SSE stream."""

    def __init__(self) -> None:
        self.sessions = 0

    async def handle(self, request: Request) -> Response:
        message: dict[str, Any] = await request.json()
        reply = {"jsonrpc": "2.0", "id": message.get("id")}
        if message["method"] == "initialize":
            self.sessions += 1
            result = {"protocolVersion": "2025-03-26", "capabilities": {"tools": {}}}
            return JSONResponse({**reply, "result": result}, headers={"Mcp-Session-Id": f"s{self.sessions}"})
        if "id" not in message:
            return Response(status_code=202)
        if request.headers.get("mcp-session-id") == "s1":
            return Response("session expired", status_code=404)
        tools = [{"name": "search", "inputSchema": {}}, {"name": "fetch", "inputSchema": {}}]
        event = json.dumps({**reply, "result": {"tools": tools}})
        return Response(f"event: message\ndata: {event}\n\n", media_type="text/event-stream")


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    registry = SessionRegistry(LocalPoolConfig(warm_sessions=1, max_sessions=30, cooldown_s=COOLDOWN_S))
    api = PoolApi(registry)

    def route(path: str, **options: Any) -> Route:
        return Route(path, McpEmulation(api, MCP_KEY, **options).handle, methods=["GET", "POST"])

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()

    app = Starlette(
        routes=[
            route("/mcp"),
            route("/preview-python/mcp", tool_set="preview-python"),
            route("/preview-shell/mcp", tool_set="preview-shell"),
            route("/tight/mcp", output_limit=CUT_AT, max_request_bytes=MAX_REQUEST),
            Route("/other/mcp", Stranger().handle, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    with serve_in_thread(app) as url:
        yield Endpoints(url)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        yield client


async def connect(
    http: httpx.AsyncClient, url: str, pool_type: PoolType | None = PoolType.PYTHON, key: str = MCP_KEY
) -> McpEndpointPool:
    return await connect_mcp_endpoint_pool(endpoint=url, api_key=key, pool_type=pool_type, http=http)
