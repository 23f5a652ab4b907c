"""A local pool served on a real loopback port for tests (bridge tests, REST-backend tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dynamic_sessions_mcp.local_pool.app import create_app
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig
from tests.support.serve import serve_in_thread


@contextmanager
def local_pool(config: LocalPoolConfig) -> Iterator[str]:
    """Start a pool (sandbox self-test, warm kernels) in a background thread; yield its base URL."""
    with serve_in_thread(create_app(config)) as url:
        yield url
