"""Entry point: serve the bridge (stdio | http), run the local pool on its own, or check the setup."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp

from dynamic_sessions_mcp import __version__, stdio
from dynamic_sessions_mcp.config import DEFAULT_API_VERSION, InboundAuth, PoolAuth, Settings
from dynamic_sessions_mcp.doctor import run_doctor
from dynamic_sessions_mcp.http_app import create_bridge_app, is_loopback
from dynamic_sessions_mcp.inbound_auth import AuthConfigError
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType
from dynamic_sessions_mcp.logs import configure_logging
from dynamic_sessions_mcp.pools.base import PoolError, PoolType
from dynamic_sessions_mcp.server import PoolTarget, open_bridge

logger = logging.getLogger("dynamic_sessions_mcp")


class StartupError(Exception):
    """A problem the user must fix before the server can start; str() says how."""


def _local_pool_config(
    settings: Settings, token: str | None, mcp_api_key: str | None = None
) -> LocalPoolConfig:
    return LocalPoolConfig(
        pool_type=LocalPoolType(settings.local_pool_type.value),
        token=token,
        mcp_api_key=mcp_api_key,
        max_sessions=settings.local_max_sessions,
        cooldown_s=settings.local_cooldown_s,
        warm_sessions=settings.local_warm_sessions,
        memory_mb=settings.local_memory_mb,
        pids_max=settings.local_pids_max,
        cpus=settings.local_cpus,
        data_dir=settings.local_data_dir,
        unsafe_no_sandbox=settings.local_unsafe_no_sandbox,
        isolation=settings.local_isolation,
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


def _check_http(settings: Settings, host: str, workers: int) -> None:
    if not is_loopback(host) and settings.auth is InboundAuth.NONE:
        raise StartupError(
            f"refusing to serve on non-loopback address {host} without inbound authentication: set "
            "DSMCP_AUTH=api-key (with DSMCP_API_KEYS or DSMCP_API_KEYS_FILE) or DSMCP_AUTH=entra "
            "(with DSMCP_ENTRA_TENANT_ID and DSMCP_ENTRA_AUDIENCE), or bind 127.0.0.1"
        )
    if workers < 1:
        raise StartupError(f"--workers must be at least 1, not {workers}")
    if workers == 1:
        return
    if not settings.pool_endpoint:
        raise StartupError(
            "several workers need a pool of their own (each worker would start its own embedded pool): "
            "run `dynamic-sessions-mcp local-pool --token T` and set DSMCP_POOL_ENDPOINT and "
            "DSMCP_POOL_TOKEN, or use one worker"
        )
    if settings.pool_auth is PoolAuth.API_KEY:
        raise StartupError(
            "an API-key pool (MCP endpoint) keeps session state in the process: use one worker"
        )
    if not settings.stateless_http:
        raise StartupError(
            "several workers need DSMCP_STATELESS_HTTP=true: a 2025-era client's Mcp-Session-Id lives "
            "in one worker, and the next request may reach another"
        )


def http_app_from_environment() -> ASGIApp:
    """The HTTP app of one worker process (uvicorn's factory when --workers > 1)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_bridge_app(settings, lambda: pool_target(settings))


def serve_http_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """Several processes on one port; handles and pool identifiers agree through the shared secret."""
    if settings.session_secret is None:
        os.environ["DSMCP_SESSION_SECRET"] = secrets.token_hex(32)  # inherited by the workers
    logger.info("serving MCP over streamable HTTP at http://%s:%d/mcp with %d workers", host, port, workers)
    uvicorn.run(
        "dynamic_sessions_mcp.cli:http_app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        lifespan="on",
    )


async def serve_http(settings: Settings, host: str, port: int) -> None:
    app = create_bridge_app(settings, lambda: pool_target(settings))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", log_config=None)
    logger.info("serving MCP over streamable HTTP at http://%s:%d/mcp", host, port)
    await uvicorn.Server(config).serve()


async def serve_local_pool(settings: Settings, args: argparse.Namespace) -> None:
    from dynamic_sessions_mcp.local_pool import runner

    if not is_loopback(args.host) and not args.token:
        raise StartupError(f"refusing to serve the local pool on {args.host} without --token")
    config = _local_pool_config(settings, args.token, args.mcp_api_key)
    await runner.serve(config, args.host, args.port)


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamic-sessions-mcp", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default=settings.host, help="HTTP bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="HTTP port (default %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=None, help=f"HTTP worker processes (default {settings.workers})"
    )
    sub = parser.add_subparsers(dest="command")
    pool = sub.add_parser("local-pool", help="run the embedded local session pool on its own")
    pool.add_argument("--host", dest="host", default="127.0.0.1")
    pool.add_argument("--port", dest="port", type=int, default=8081)
    pool.add_argument("--pool-type", choices=[t.value for t in PoolType], default=None)
    pool.add_argument("--token", default=None, help="bearer token clients must send (default: any)")
    pool.add_argument(
        "--mcp-api-key",
        default=None,
        help="also serve the pool's built-in MCP endpoint at /mcp, for this x-ms-apikey (default: off)",
    )
    sub.add_parser("doctor", help="check the configuration, the pool credential and a probe execution")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"dynamic-sessions-mcp: invalid configuration:\n{exc}")
    args = _parser(settings).parse_args(argv)
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "local-pool":
            if args.pool_type:
                settings = settings.model_copy(update={"local_pool_type": PoolType(args.pool_type)})
            anyio.run(serve_local_pool, settings, args)
        elif args.command == "doctor":
            # The report goes to stderr, like everything else this program writes outside the protocol;
            # INFO logs would interleave with it.
            if settings.log_level.upper() != "DEBUG":
                logging.getLogger().setLevel(logging.WARNING)
            if not anyio.run(run_doctor, settings, args.host, lambda: pool_target(settings), sys.stderr):
                sys.exit(1)
        elif args.transport == "stdio":
            anyio.run(serve_stdio, settings)
        else:
            workers = settings.workers if args.workers is None else args.workers
            _check_http(settings, args.host, workers)
            if workers > 1:
                serve_http_workers(settings, args.host, args.port, workers)
            else:
                anyio.run(serve_http, settings, args.host, args.port)
    except (StartupError, PoolError, AuthConfigError) as exc:
        sys.exit(f"dynamic-sessions-mcp: {exc}")
    except KeyboardInterrupt:
        pass
