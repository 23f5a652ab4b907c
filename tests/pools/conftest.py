"""Fixtures for the pool backend tests: fault pools (instant or proxying) on real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType
from dynamic_sessions_mcp.pools.base import PoolType
from dynamic_sessions_mcp.pools.credentials import StaticTokenAuth
from dynamic_sessions_mcp.pools.rest import RestPool, connect_rest_pool
from tests.support.fault_pool import FaultPool
from tests.support.local_pool import local_pool
from tests.support.serve import serve_in_thread

SECRET_TOKEN = "sekrit-pool-token-4f1e0c7a9b"
SHELL_POOL_TOKEN = "shell-pool-token-93b1d2"


@dataclass(frozen=True)
class ServedFaultPool:
    fault: FaultPool
    url: str


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def instant_server() -> Iterator[ServedFaultPool]:
    fault = FaultPool(instant=True)
    with serve_in_thread(fault.app) as url:
        yield ServedFaultPool(fault, url)


@pytest.fixture
def instant(instant_server: ServedFaultPool) -> Iterator[ServedFaultPool]:
    """The module's instant fault pool, with no faults and no recorded requests."""
    instant_server.fault.clear()
    yield instant_server
    instant_server.fault.clear()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        yield client


async def rest_pool(
    url: str,
    http: httpx.AsyncClient,
    *,
    api_version: str = "2025-10-02-preview",
    pool_type: PoolType | None = PoolType.PYTHON,
    token: str = SECRET_TOKEN,
    **kwargs: Any,
) -> RestPool:
    return await connect_rest_pool(
        endpoint=url,
        api_version=api_version,
        pool_type=pool_type,
        http=http,
        auth=StaticTokenAuth(token),
        **kwargs,
    )


# ---- the real local pool --------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalPoolServer:
    url: str
    token: str


@pytest.fixture(scope="module")
def rest_shell_pool() -> Iterator[LocalPoolServer]:
    """A local Shell pool for this module (the Python pool is the session's shared `python_pool`)."""
    config = LocalPoolConfig(pool_type=LocalPoolType.SHELL, token=SHELL_POOL_TOKEN, max_sessions=10)
    with local_pool(config) as url:
        yield LocalPoolServer(url, SHELL_POOL_TOKEN)
