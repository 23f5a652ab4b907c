"""The ASGI app for streamable HTTP: /mcp and /healthz, with the pool opened in its lifespan.

Opening the pool in the ASGI lifespan (not before uvicorn starts) lets any ASGI server, and any
number of worker processes, run `create_bridge_app` as is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import httpx
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from dynamic_sessions_mcp.config import Settings
from dynamic_sessions_mcp.server import PoolTarget, open_bridge

# JSON-RPC framing and base64 (4/3) around the largest upload we accept.
_BODY_OVERHEAD = 1024 * 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _transport_security(settings: Settings) -> TransportSecuritySettings:
    hosts = ["127.0.0.1", "localhost", "[::1]", *settings.allowed_hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*hosts, *(f"{h}:*" for h in hosts)],
        allowed_origins=[],
    )


def mcp_http_app(mcp: MCPServer, settings: Settings) -> Starlette:
    """The SDK's app for `mcp` plus /healthz. Build it once per server object."""

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    mcp.custom_route("/healthz", methods=["GET"])(healthz)

    return mcp.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=settings.stateless_http,
        max_request_body_size=settings.max_upload_bytes * 4 // 3 + _BODY_OVERHEAD,
        transport_security=_transport_security(settings),
    )


def create_bridge_app(
    settings: Settings,
    open_target: Callable[[], AbstractAsyncContextManager[PoolTarget]],
    *,
    pool_auth: httpx.Auth | None = None,
) -> Starlette:
    """A Starlette app that opens the pool target and the bridge at startup and serves /mcp."""
    inner: list[ASGIApp] = []

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            target = await stack.enter_async_context(open_target())
            mcp = await stack.enter_async_context(open_bridge(settings, target, pool_auth=pool_auth))
            inner.append(mcp_http_app(mcp, settings))
            await stack.enter_async_context(mcp.session_manager.run())
            yield
            inner.clear()

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        await inner[0](scope, receive, send)

    return Starlette(routes=[Mount("/", app=dispatch)], lifespan=lifespan)
