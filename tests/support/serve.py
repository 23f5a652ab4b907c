"""Serve an ASGI app on a real loopback port from a background thread (its own event loop).

Tests and benchmarks use this for every server they start (local pool, fault pool, bridge over
HTTP), so sync fixtures can share one server across a whole test session.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any, port: int | None = None, startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1; yield its base URL ("http://127.0.0.1:PORT")."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on port {port} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"server on port {port} did not start in {startup_timeout_s}s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until_serving(
    proc: subprocess.Popen[Any],
    health_url: str,
    *,
    ready: Callable[[], bool] = lambda: True,
    logs: Callable[[], str] = lambda: "",
    timeout_s: float = 90.0,
) -> None:
    """Wait for a server subprocess to answer `health_url` (and `ready()`); fail with its logs if it exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"the server exited: {logs()}"
        try:
            if httpx.get(health_url).status_code == 200 and ready():
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
