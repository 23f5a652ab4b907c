"""Entry point: serve the bridge (stdio | http) or run the local pool on its own."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import uvicorn
from pydantic import ValidationError

from dynamic_sessions_mcp import __version__, stdio
from dynamic_sessions_mcp.config import DEFAULT_API_VERSION, PoolAuth, Settings
from dynamic_sessions_mcp.http_app import create_bridge_app, is_loopback
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType
from dynamic_sessions_mcp.pools.base import PoolError, PoolType
from dynamic_sessions_mcp.server import PoolTarget, open_bridge

logger = logging.getLogger("dynamic_sessions_mcp")


class StartupError(Exception):
    """A problem the user must fix before the server can start; str() says how."""


def configure_logging(level: str) -> None:
    """Everything to stderr (stdout is the stdio transport); quiet per-request library logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "mcp.server.lowlevel.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _local_pool_config(settings: Settings, token: str | None) -> LocalPoolConfig:
    return LocalPoolConfig(
        pool_type=LocalPoolType(settings.local_pool_type.value),
        token=token,
        max_sessions=settings.local_max_sessions,
        cooldown_s=settings.local_cooldown_s,
        warm_sessions=settings.local_warm_sessions,
        memory_mb=settings.local_memory_mb,
        pids_max=settings.local_pids_max,
        cpus=settings.local_cpus,
        data_dir=settings.local_data_dir,
        unsafe_no_sandbox=settings.local_unsafe_no_sandbox,
    )


@asynccontextmanager
async def embedded_pool(settings: Settings) -> AsyncIterator[PoolTarget]:
    """Start the local pool in-process on an ephemeral loopback port, guarded by a fresh token."""
    try:
        from dynamic_sessions_mcp.local_pool.runner import running
    except ImportError as exc:
        raise StartupError(
            f"the embedded local pool needs the 'local' extra ({exc.name} is missing): "
            "pip install 'dynamic-sessions-mcp[local]', or set DSMCP_POOL_ENDPOINT to use an Azure pool"
        ) from exc
    token = secrets.token_urlsafe(32)
    async with running(_local_pool_config(settings, token)) as url:
        logger.info("embedded local pool (%s) at %s", settings.local_pool_type.value, url)
        yield PoolTarget(
            endpoint=url,
            api_version=DEFAULT_API_VERSION,
            pool_type=PoolType(settings.local_pool_type.value),
            auth=PoolAuth.TOKEN,
            token=token,
        )


@asynccontextmanager
async def pool_target(settings: Settings) -> AsyncIterator[PoolTarget]:
    """The configured pool, or the embedded local pool when none is configured."""
    if settings.pool_endpoint:
        yield PoolTarget.from_settings(settings)
    else:
        async with embedded_pool(settings) as target:
            yield target


async def serve_stdio(settings: Settings) -> None:
    async with pool_target(settings) as target, open_bridge(settings, target) as mcp:
        await stdio.serve_stdio(mcp)


async def serve_http(settings: Settings, host: str, port: int) -> None:
    if not is_loopback(host):
        raise StartupError(
            f"refusing to serve on non-loopback address {host}: inbound authentication is not available yet, "
            "so the server only binds loopback (127.0.0.1); put an authenticating reverse proxy in front"
        )
    app = create_bridge_app(settings, lambda: pool_target(settings))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", log_config=None)
    logger.info("serving MCP over streamable HTTP at http://%s:%d/mcp", host, port)
    await uvicorn.Server(config).serve()


async def serve_local_pool(settings: Settings, args: argparse.Namespace) -> None:
    from dynamic_sessions_mcp.local_pool import runner

    if not is_loopback(args.host) and not args.token:
        raise StartupError(f"refusing to serve the local pool on {args.host} without --token")
    config = _local_pool_config(settings, args.token)
    await runner.serve(config, args.host, args.port)


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamic-sessions-mcp", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default=settings.host, help="HTTP bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="HTTP port (default %(default)s)")
    sub = parser.add_subparsers(dest="command")
    pool = sub.add_parser("local-pool", help="run the embedded local session pool on its own")
    pool.add_argument("--host", dest="host", default="127.0.0.1")
    pool.add_argument("--port", dest="port", type=int, default=8081)
    pool.add_argument("--pool-type", choices=[t.value for t in PoolType], default=None)
    pool.add_argument("--token", default=None, help="bearer token clients must send (default: any)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"dynamic-sessions-mcp: invalid configuration:\n{exc}")
    args = _parser(settings).parse_args(argv)
    configure_logging(settings.log_level)
    try:
        if args.command == "local-pool":
            if args.pool_type:
                settings = settings.model_copy(update={"local_pool_type": PoolType(args.pool_type)})
            anyio.run(serve_local_pool, settings, args)
        elif args.transport == "stdio":
            anyio.run(serve_stdio, settings)
        else:
            anyio.run(serve_http, settings, args.host, args.port)
    except (StartupError, PoolError) as exc:
        sys.exit(f"dynamic-sessions-mcp: {exc}")
    except KeyboardInterrupt:
        pass
