"""The bridge over the MCP-endpoint backend: configuration errors, expiry, large files."""

from __future__ import annotations

import base64
import os
import time

import anyio
import pytest
from mcp import Client
from mcp.types import BlobResourceContents, EmbeddedResource
from pydantic import SecretStr

from dynamic_sessions_mcp.config import PoolAuth, Settings
from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind, PoolType
from dynamic_sessions_mcp.results import RESET_NOTICE
from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from tests.bridge.helpers import error, ok
from tests.conftest import SESSION_SECRET, PoolServer, bridge_settings
from tests.mcp_endpoint.conftest import COOLDOWN_S, MCP_KEY, Endpoints

pytestmark = pytest.mark.anyio


def settings_for(url: str, key: str | None = MCP_KEY) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        pool_endpoint=url,
        pool_auth=PoolAuth.API_KEY,
        pool_api_key=SecretStr(key) if key else None,
        pool_type=PoolType.PYTHON,
        session_secret=SecretStr(SESSION_SECRET),
    )


async def test_a_wrong_or_missing_key_says_which_setting_to_fix(endpoints: Endpoints) -> None:
    settings = settings_for(endpoints.url(), key="wrong-key")
    with pytest.raises(PoolError) as raised:
        async with open_bridge(settings, PoolTarget.from_settings(settings)):
            pass
    assert raised.value.kind is PoolErrorKind.AUTH
    assert "DSMCP_POOL_API_KEY" in raised.value.message and "DSMCP_POOL_ENDPOINT" in raised.value.message
    settings = settings_for(endpoints.url(), key=None)
    with pytest.raises(PoolError, match="DSMCP_POOL_API_KEY") as raised:
        async with open_bridge(settings, PoolTarget.from_settings(settings)):
            pass
    assert raised.value.kind is PoolErrorKind.CONFIG


async def test_an_unknown_tool_set_is_refused_at_start(endpoints: Endpoints) -> None:
    settings = settings_for(endpoints.url("other"))
    with pytest.raises(PoolError) as raised:
        async with open_bridge(settings, PoolTarget.from_settings(settings)):
            pass
    assert raised.value.kind is PoolErrorKind.CONFIG and "['fetch', 'search']" in raised.value.message


async def test_an_expired_environment_is_reported_and_replaced(endpoints: Endpoints) -> None:
    settings = settings_for(endpoints.url())
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as bridge, Client(bridge) as client:
        handle = ok(await client.call_tool("run_python", {"code": "x = 1"}))["session"]
        ok(await client.call_tool("upload_file", {"path": "kept.txt", "content": "k", "session": handle}))
        await anyio.sleep(COOLDOWN_S + 1.0)  # the pool reaps the idle environment
        lost = error(await client.call_tool("download_file", {"path": "kept.txt", "session": handle}))
        assert "variables and files were reset" in lost and handle in lost
        again = ok(await client.call_tool("run_python", {"code": "x", "session": handle}))
        assert again["notice"] == RESET_NOTICE and "NameError" in again["stderr"]
        ok(await client.call_tool("run_python", {"code": "x = 2", "session": handle}))
        now = ok(await client.call_tool("run_python", {"code": "x", "session": handle}))
        assert now["result"] == 2 and now["notice"] == ""
        listing = ok(await client.call_tool("list_files", {"session": handle}))
        assert listing["files"] == []


async def test_ten_megabytes_round_trip_byte_identical(python_pool: PoolServer) -> None:
    settings = bridge_settings(python_pool, "mcp-endpoint", max_download_bytes=16 * 1024 * 1024)
    data = os.urandom(10 * 1024 * 1024)
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as bridge, Client(bridge) as client:
        started = time.monotonic()
        up = ok(
            await client.call_tool(
                "upload_file",
                {"path": "big/blob.bin", "content": base64.b64encode(data).decode(), "encoding": "base64"},
            )
        )
        uploaded = time.monotonic()
        assert up["size"] == len(data)
        down = await client.call_tool("download_file", {"path": "big/blob.bin", "session": up["session"]})
        finished = time.monotonic()
        assert ok(down)["size"] == len(data)
        resource = down.content[1]
        assert isinstance(resource, EmbeddedResource) and isinstance(resource.resource, BlobResourceContents)
        assert base64.b64decode(resource.resource.blob) == data
    print(f"10 MiB via MCP endpoint: upload {uploaded - started:.1f} s, download {finished - uploaded:.1f} s")
