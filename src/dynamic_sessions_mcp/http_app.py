"""The ASGI app for hosting over streamable HTTP, with the pool opened in its lifespan.

Routes: /mcp (behind inbound auth), and outside auth /healthz (alive), /readyz (the pool answers
with our credential), /metrics (Prometheus) and the OAuth protected resource metadata. Every
request gets a request id for the logs. Opening the pool in the ASGI lifespan (not before uvicorn
starts) lets any ASGI server, and any number of worker processes, run `create_bridge_app` as is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import httpx
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dynamic_sessions_mcp.config import InboundAuth, Settings
from dynamic_sessions_mcp.entra_tokens import EntraVerifier
from dynamic_sessions_mcp.health import Readiness
from dynamic_sessions_mcp.inbound_auth import (
    MCP_PATH,
    METADATA_PATH,
    ApiKeyVerifier,
    AuthConfig,
    InboundAuthMiddleware,
    Verifier,
    metadata_endpoint,
)
from dynamic_sessions_mcp.logs import RequestIdMiddleware
from dynamic_sessions_mcp.pools.base import Pool
from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from dynamic_sessions_mcp.telemetry import InstrumentedTransport, Metrics, ToolCallMetrics

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
    public_host = urlsplit(settings.public_url).hostname if settings.public_url else None
    hosts = [
        "127.0.0.1",
        "localhost",
        "[::1]",
        *settings.allowed_hosts,
        *([public_host] if public_host else []),
    ]
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


# A 2025-era client opens a GET stream per session for messages the server sends outside any
# request. This server sends none (progress and logs ride on the request's own stream), and the
# streams cost a connection and 61 KiB per idle client (bench_scale: 1,000 idle clients took
# +102 MiB with them, +42 MiB without), so it answers 405 as the spec allows.
_NO_STANDALONE_STREAM = Response(status_code=405, headers={"Allow": "POST, DELETE"})


def _opens_standalone_stream(scope: Scope) -> bool:
    return (
        scope["type"] == "http"
        and scope["method"] == "GET"
        and scope["path"].rstrip("/") == MCP_PATH
        and any(name == b"mcp-session-id" for name, _ in scope["headers"])
    )


@asynccontextmanager
async def _open_verifier(config: AuthConfig) -> AsyncIterator[Verifier | None]:
    if config.api_keys:
        yield ApiKeyVerifier(config.api_keys)
    elif config.entra is not None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
            yield EntraVerifier(config.entra, http)
    else:
        yield None


def _operations_routes(config: AuthConfig, metrics: Metrics, readiness: Readiness) -> list[BaseRoute]:
    """Routes outside auth: liveness, readiness, metrics, and the resource metadata document."""

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        state = await readiness.check()
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable", "reason": state.reason}, status_code=503)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if config.mode is not InboundAuth.NONE:
        prm = metadata_endpoint(config)
        routes += [
            Route(METADATA_PATH + MCP_PATH, prm, methods=["GET"]),
            Route(METADATA_PATH, prm, methods=["GET"]),
        ]
    return routes


def create_bridge_app(
    settings: Settings,
    open_target: Callable[[], AbstractAsyncContextManager[PoolTarget]],
    *,
    pool_auth: httpx.Auth | None = None,
) -> Starlette:
    """A Starlette app that opens the pool target and the bridge at startup and serves /mcp.

    Raises AuthConfigError at once when the inbound auth settings cannot work.
    """
    auth = AuthConfig.from_settings(settings)
    metrics = Metrics()
    readiness = Readiness()
    inner: list[ASGIApp] = []

    def connected(pool: Pool) -> None:
        readiness.pool = pool

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            target = await stack.enter_async_context(open_target())
            mcp = await stack.enter_async_context(
                open_bridge(
                    settings,
                    target,
                    pool_auth=pool_auth,
                    wrap_transport=lambda inner: InstrumentedTransport(inner, target.endpoint, metrics),
                    on_connected=connected,
                    serves_http=True,
                )
            )
            mcp.middleware.append(ToolCallMetrics(metrics, {tool.name for tool in await mcp.list_tools()}))
            app: ASGIApp = mcp_http_app(mcp, settings)
            verifier = await stack.enter_async_context(_open_verifier(auth))
            if verifier is not None:
                refused = metrics.auth_refusals
                app = InboundAuthMiddleware(app, auth, verifier, lambda reason: refused.labels(reason).inc())
            inner.append(app)
            await stack.enter_async_context(mcp.session_manager.run())
            try:
                yield
            finally:
                inner.clear()
                readiness.pool = None

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if _opens_standalone_stream(scope):
            await _NO_STANDALONE_STREAM(scope, receive, send)
            return
        await inner[0](scope, receive, send)

    return Starlette(
        routes=[*_operations_routes(auth, metrics, readiness), Mount("/", app=dispatch)],
        middleware=[Middleware(RequestIdMiddleware)],
        lifespan=lifespan,
    )
