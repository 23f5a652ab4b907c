"""The REST backend's additions against the real local pool: streamed upload and download on both
contracts, asynchronous executions, and how their failures read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from dynamic_sessions_mcp.pools.base import ExecutionKind, PoolError, PoolErrorKind
from dynamic_sessions_mcp.pools.rest import RestPool
from tests.conftest import PoolServer
from tests.pools.conftest import rest_pool

pytestmark = pytest.mark.anyio

# Spaces, punctuation and non-ASCII exercise the hand-built multipart header. (A '"' is sent as
# %22, as httpx and browsers do; the local pool's parser keeps it literally, so it is left out.)
ODD = "odd name #1 & 50% (ü);x=1.bin"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture(params=["2024-02-02-preview", "2025-10-02-preview"])
async def pool(request: pytest.FixtureRequest, python_pool: PoolServer) -> AsyncIterator[RestPool]:
    async with httpx.AsyncClient() as http:
        yield await rest_pool(python_pool.url, http, api_version=request.param, token=python_pool.token)


@pytest.fixture
async def sid(pool: RestPool) -> AsyncIterator[str]:
    identifier = f"streams-{uuid.uuid4().hex[:16]}"
    yield identifier
    await pool.end_session(identifier)


async def chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("known_size", [True, False])
async def test_streamed_upload_and_download_round_trip(pool: RestPool, sid: str, known_size: bool) -> None:
    path = f"in/{ODD}"
    info = await pool.upload_stream(sid, path, chunks(PAYLOAD), len(PAYLOAD) if known_size else None)
    assert info.path == path
    stream = await pool.open_download(sid, path)
    try:
        received = b"".join([chunk async for chunk in stream.chunks])
    finally:
        await stream.close()
    assert received == PAYLOAD and stream.size == len(PAYLOAD)


async def test_a_missing_file_fails_before_streaming(pool: RestPool, sid: str) -> None:
    with pytest.raises(PoolError) as caught:
        await pool.open_download(sid, "nothing/here.txt")
    assert caught.value.kind is PoolErrorKind.NOT_FOUND and "here.txt" in caught.value.message


async def test_asynchronous_executions(pool: RestPool, sid: str) -> None:
    if not pool.supports_background:
        with pytest.raises(PoolError) as refused:
            await pool.start_execution(sid, ExecutionKind.PYTHON, "1", 10, "op-legacy")
        assert refused.value.kind is PoolErrorKind.CONFIG
        return
    sandbox = await pool.start_execution(
        sid, ExecutionKind.SHELL, "sleep 1; echo done; exit 3", 10, "op-shell"
    )
    assert sandbox
    assert await pool.get_execution(sid, ExecutionKind.SHELL, "op-shell") is None  # still running
    outcome = None
    for _ in range(50):
        outcome = await pool.get_execution(sid, ExecutionKind.SHELL, "op-shell")
        if outcome is not None:
            break
        await anyio.sleep(0.1)
    assert outcome is not None
    assert (outcome.exit_code, outcome.stdout, outcome.succeeded, outcome.result) == (
        3,
        "done\n",
        False,
        None,
    )
    with pytest.raises(PoolError) as unknown:
        await pool.get_execution(sid, ExecutionKind.PYTHON, "op-never-started")
    assert unknown.value.kind is PoolErrorKind.NOT_FOUND and "execution" in unknown.value.message
