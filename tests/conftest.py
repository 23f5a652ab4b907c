"""Shared fixtures: one local pool per test session, bridges on top of it (in memory, HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from mcp.server import MCPServer

from dynamic_sessions_mcp.config import PoolAuth, Settings
from dynamic_sessions_mcp.http_app import create_bridge_app
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig
from dynamic_sessions_mcp.pools.base import PoolType
from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from tests.support.local_pool import local_pool
from tests.support.serve import serve_in_thread

POOL_TOKEN = "test-pool-token-7f3a9c"
POOL_MCP_KEY = "test-pool-mcp-key-5e2b81"  # the x-ms-apikey of the pool's emulated MCP endpoint
SESSION_SECRET = "test-session-secret-0123456789abcdef"
# The bridge's two pool backends: the REST data plane, and the pool's built-in MCP endpoint.
BACKENDS = ["rest", "mcp-endpoint"]


@dataclass(frozen=True)
class PoolServer:
    url: str
    token: str
    mcp_key: str | None = None

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def session_exists(self, identifier: str) -> bool:
        """Ask the pool itself (GET session) whether a session is alive."""
        r = httpx.get(
            f"{self.url}/session",
            params={"api-version": "2025-10-02-preview", "identifier": identifier},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert r.status_code in (200, 404), r.text
        return r.status_code == 200


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def python_pool() -> Iterator[PoolServer]:
    config = LocalPoolConfig(
        token=POOL_TOKEN, mcp_api_key=POOL_MCP_KEY, warm_sessions=2, max_sessions=60, cooldown_s=600
    )
    with local_pool(config) as url:
        yield PoolServer(url, POOL_TOKEN, POOL_MCP_KEY)


def backend_settings(pool: PoolServer, backend: str) -> dict[str, object]:
    """How a bridge reaches `pool` through one of BACKENDS."""
    if backend == "mcp-endpoint":
        assert pool.mcp_key is not None
        return {"pool_endpoint": pool.mcp_url, "pool_auth": PoolAuth.API_KEY, "pool_api_key": pool.mcp_key}
    return {"pool_endpoint": pool.url, "pool_auth": PoolAuth.TOKEN, "pool_token": pool.token}


def bridge_settings(pool: PoolServer, backend: str = "rest", **overrides: object) -> Settings:
    values: dict[str, object] = {
        **backend_settings(pool, backend),
        "pool_type": PoolType.PYTHON,
        "session_secret": SESSION_SECRET,
        "busy_wait_s": 2.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(python_pool: PoolServer) -> Settings:
    return bridge_settings(python_pool)


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[MCPServer]:
    """A bridge in this test's event loop, for the in-memory Client."""
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as mcp:
        yield mcp


def serve_bridge(settings: Settings) -> Iterator[str]:
    @asynccontextmanager
    async def target() -> AsyncIterator[PoolTarget]:
        yield PoolTarget.from_settings(settings)

    with serve_in_thread(create_bridge_app(settings, target)) as url:
        yield url + "/mcp"


@pytest.fixture(scope="session")
def http_bridge(python_pool: PoolServer) -> Iterator[str]:
    """A bridge served over real streamable HTTP on loopback; yields the /mcp URL."""
    yield from serve_bridge(bridge_settings(python_pool))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend_bridge(python_pool: PoolServer, backend: str) -> AsyncIterator[MCPServer]:
    """A bridge over each backend in turn (in this test's event loop, for the in-memory Client)."""
    settings = bridge_settings(python_pool, backend)
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as mcp:
        yield mcp


@pytest.fixture(scope="session")
def mcp_endpoint_http_bridge(python_pool: PoolServer) -> Iterator[str]:
    """Like http_bridge, over the pool's MCP endpoint."""
    yield from serve_bridge(bridge_settings(python_pool, "mcp-endpoint"))


@pytest.fixture
def backend_http_bridge(request: pytest.FixtureRequest, backend: str) -> str:
    """The /mcp URL of an HTTP bridge over each backend in turn."""
    name = "mcp_endpoint_http_bridge" if backend == "mcp-endpoint" else "http_bridge"
    return str(request.getfixturevalue(name))
