"""Serving the local pool: standalone (`serve`, until a signal) or embedded in another program's
event loop (`running`, which the bridge's CLI uses for its default local pool).

The registry is started before uvicorn, so a sandbox that cannot start raises SandboxUnavailable
to the caller instead of vanishing into a lifespan log line; the socket is bound up front so port 0
works and the URL is known before the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Generator

import uvicorn

from dynamic_sessions_mcp.local_pool.app import build_app
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig
from dynamic_sessions_mcp.local_pool.sessions import SessionRegistry

logger = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 30.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the host program owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets that say so, and
    # without it every keep-alive response stalls ~40 ms (Nagle against the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def _served(
    config: LocalPoolConfig, host: str, port: int
) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    registry = SessionRegistry(config)
    await registry.start()
    try:
        sock = _bind(host, port)
        with sock:
            uv_config = uvicorn.Config(
                build_app(registry, manage_registry=False), lifespan="off", log_level="warning"
            )
            server = _EmbeddedServer(uv_config)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            try:
                async with asyncio.timeout(_STARTUP_TIMEOUT_S):
                    while not server.started:
                        if task.done():
                            task.result()
                            raise RuntimeError("the local pool's HTTP server stopped during start-up")
                        await asyncio.sleep(0.01)
                bound_port = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                yield f"http://{shown}:{bound_port}", task
            finally:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await task
    finally:
        await registry.stop()


@contextlib.asynccontextmanager
async def running(config: LocalPoolConfig, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the pool in the current event loop; yield its base URL once it is ready."""
    async with _served(config, host, port) as (url, _task):
        yield url


async def serve(config: LocalPoolConfig, host: str, port: int) -> None:
    """Serve the pool until SIGINT/SIGTERM (or until the server stops), then kill every sandbox."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        async with _served(config, host, port) as (url, task):
            logger.info("local session pool listening on %s", url)
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
