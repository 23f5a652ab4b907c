"""Files in three tiers, through the protocol against the local pool: signed URLs served by the
bridge (50 MB up and down with bounded memory; tampered, expired or misused URLs refused), MCP
resources for session files (resolved per caller), and local paths on stdio confined to the
allowed directories."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client, MCPError
from mcp.server import MCPServer
from mcp.types import BlobResourceContents, TextResourceContents
from PIL import Image as PILImage

from dynamic_sessions_mcp.file_links import LinkSigner
from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from tests.bridge.helpers import error, ok, text
from tests.conftest import SESSION_SECRET, PoolServer, bridge_settings
from tests.results.conftest import WebBridge, http_identifier, web_bridge

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
BIG = 50 * MIB
MEMORY_BOUND = 16 * MIB  # peak Python allocations of the whole test process during the transfer


@pytest.fixture(scope="module")
def web(python_pool: PoolServer) -> Iterator[WebBridge]:
    with web_bridge(python_pool) as bridge:
        yield bridge


def block(i: int) -> bytes:
    """1 MiB of deterministic, incompressible-looking data."""
    return hashlib.sha256(i.to_bytes(4, "big")).digest() * (MIB // 32)


async def blocks() -> AsyncIterator[bytes]:
    for i in range(BIG // MIB):
        yield block(i)


def rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_fifty_megabytes_up_and_down_through_signed_urls_with_bounded_memory(web: WebBridge) -> None:
    async with Client(web.url) as client:
        handle = ok(await client.call_tool("new_session", {}))["session"]
        put = ok(
            await client.call_tool(
                "file_url", {"path": "big/blob.bin", "direction": "upload", "session": handle}
            )
        )
        get = ok(await client.call_tool("file_url", {"path": "big/blob.bin", "session": handle}))
    assert put["method"] == "PUT" and get["method"] == "GET" and put["url"].startswith(web.base + "/files/")
    assert http_identifier(handle) not in put["url"] + get["url"]  # the pool identifier stays hidden

    expected = hashlib.sha256()
    for i in range(BIG // MIB):
        expected.update(block(i))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    rss_before = rss_peak_kib()
    tracemalloc.start()
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            up = await http.put(put["url"], content=blocks(), headers={"Content-Length": str(BIG)})
            assert up.status_code == 201, up.text
            assert up.json() == {"path": "/mnt/data/big/blob.bin", "size": BIG}
            digest, received = hashlib.sha256(), 0
            async with http.stream("GET", get["url"]) as down:
                assert down.status_code == 200
                assert down.headers["content-length"] == str(BIG)
                async for chunk in down.aiter_bytes():
                    digest.update(chunk)
                    received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = rss_peak_kib() - rss_before
    print(
        f"50 MiB up+down: tracemalloc peak {peak / MIB:.1f} MiB, peak RSS growth {rss_growth / 1024:.1f} MiB"
    )
    assert received == BIG and digest.hexdigest() == expected.hexdigest()
    assert peak < MEMORY_BOUND
    assert rss_growth * 1024 < 2 * MEMORY_BOUND

    # download_file does not attach it: a resource link and a fresh signed URL instead.
    async with Client(web.url) as client:
        result = await client.call_tool("download_file", {"path": "big/blob.bin", "session": handle})
        data = ok(result)
        assert data["attached"] is False and data["size"] == BIG and data["url"].startswith(web.base)
        assert [b.type for b in result.content] == ["text", "resource_link"]
        assert "GET " + data["url"] in text(result)
        await client.call_tool("end_session", {"session": handle})


async def test_tampered_expired_and_misused_urls_are_refused(web: WebBridge) -> None:
    async with Client(web.url) as client:
        handle = ok(await client.call_tool("new_session", {}))["session"]
        ok(await client.call_tool("upload_file", {"path": "note.txt", "content": "hi", "session": handle}))
        get = ok(await client.call_tool("file_url", {"path": "note.txt", "session": handle}))["url"]
    token = get.rsplit("/", 1)[1]
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    signer = LinkSigner(SESSION_SECRET.encode(), web.base, ttl_s=900)
    expired = signer.sign("GET", http_identifier(handle), "note.txt", now=time.time() - 901).url
    other_key = LinkSigner(b"another-secret-of-32-bytes......", web.base, 900)
    async with httpx.AsyncClient() as http:
        assert (await http.get(get)).text == "hi"
        refused = {
            "tampered": await http.get(f"{web.base}/files/{flipped}"),
            "truncated": await http.get(get[:-6]),
            "expired": await http.get(expired),
            "wrong method": await http.put(get, content=b"overwrite"),
            "other secret": await http.get(other_key.sign("GET", http_identifier(handle), "note.txt").url),
            "garbage": await http.get(f"{web.base}/files/!!!"),
        }
        assert (await http.get(get)).text == "hi"  # the PUT did not write
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 403)
    assert "expired" in refused["expired"].json()["error"]
    assert "signature" in refused["tampered"].json()["error"]


async def test_session_files_are_resources_resolved_per_caller(web: WebBridge, bridge: MCPServer) -> None:
    png = io.BytesIO()
    PILImage.new("RGB", (8, 8), (0, 90, 200)).save(png, "PNG")
    async with Client(web.url) as client, Client(bridge) as local:
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["sandbox://{session}/{+path}"]
        handle = ok(await client.call_tool("new_session", {}))["session"]
        ok(
            await client.call_tool(
                "upload_file", {"path": "d/é x.csv", "content": "a,b\n", "session": handle}
            )
        )
        encoded = base64.b64encode(png.getvalue()).decode()
        ok(
            await client.call_tool(
                "upload_file", {"path": "p.png", "content": encoded, "encoding": "base64", "session": handle}
            )
        )
        down = ok(await client.call_tool("download_file", {"path": "d/é x.csv", "session": handle}))
        assert down["uri"] == f"sandbox://{handle}/d/%C3%A9%20x.csv"

        (csv,) = (await client.read_resource(down["uri"])).contents
        assert isinstance(csv, TextResourceContents)
        assert csv.text == "a,b\n" and csv.mime_type == "text/csv"
        (image,) = (await client.read_resource(f"sandbox://{handle}/p.png")).contents
        assert isinstance(image, BlobResourceContents)
        assert base64.b64decode(image.blob) == png.getvalue() and image.mime_type == "image/png"

        # The same handle from another caller (stdio: 'local') reaches another sandbox.
        with pytest.raises(MCPError, match="no such file"):
            await local.read_resource(down["uri"])
        with pytest.raises(MCPError, match="unknown session handle"):
            await client.read_resource("sandbox://h-aaaaaaaaaaaaaaaaaaaaaaaa/p.png")
        with pytest.raises(MCPError):
            await client.read_resource(f"sandbox://{handle}/../etc/passwd")
        await client.call_tool("end_session", {"session": handle})


async def test_http_offers_signed_urls_and_no_local_paths(web: WebBridge) -> None:
    async with Client(web.url) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert "file_url" in tools
    assert "local_path" not in tools["upload_file"].input_schema["properties"]
    assert "local_path" not in tools["download_file"].input_schema["properties"]


# ---- local paths (stdio) ------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("do not read")
    return allowed, outside


@pytest.fixture
async def stdio_bridge(python_pool: PoolServer, dirs: tuple[Path, Path]) -> AsyncIterator[MCPServer]:
    """An in-memory bridge: the stdio flavour (no HTTP headers), with one allowed directory."""
    settings = bridge_settings(python_pool, local_file_dirs=[dirs[0]], public_url="http://127.0.0.1:1")
    async with open_bridge(settings, PoolTarget.from_settings(settings)) as mcp:
        yield mcp


async def test_local_paths_inside_the_allowed_directory_stream_in_and_out(
    stdio_bridge: MCPServer, dirs: tuple[Path, Path]
) -> None:
    allowed, _ = dirs
    payload = os.urandom(3 * MIB + 17)
    (allowed / "in.bin").write_bytes(payload)
    async with Client(stdio_bridge) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "local_path" in tools["upload_file"].input_schema["properties"]
        assert "local_path" in tools["download_file"].input_schema["properties"]
        assert "file_url" not in tools  # stdio: no signed URLs, even with a public URL set
        up = await client.call_tool("upload_file", {"path": "data/in.bin", "local_path": "in.bin"})
        assert ok(up)["size"] == len(payload) and f"from {allowed / 'in.bin'}" in text(up)
        target = allowed / "sub" / "out.bin"
        target.parent.mkdir()
        down = ok(await client.call_tool("download_file", {"path": "data/in.bin", "local_path": str(target)}))
        assert down["local_path"] == str(target) and down["size"] == len(payload)
        assert target.read_bytes() == payload
        assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]  # no temporary left
        message = error(
            await client.call_tool("upload_file", {"path": "x", "content": "y", "local_path": "in.bin"})
        )
        assert "either content or local_path" in message


async def test_local_paths_outside_the_allowed_directory_are_refused(
    stdio_bridge: MCPServer, dirs: tuple[Path, Path]
) -> None:
    allowed, outside = dirs
    (allowed / "link.txt").symlink_to(outside / "secret.txt")
    (allowed / "linkdir").symlink_to(outside)
    (allowed / "drop.txt").symlink_to(outside / "dropped.txt")
    async with Client(stdio_bridge) as client:
        for local_path in (
            str(outside / "secret.txt"),  # plainly outside
            "../outside/secret.txt",  # `..` from the allowed directory
            str(allowed / ".." / "outside" / "secret.txt"),
            "link.txt",  # a symlink to a file outside
            "linkdir/secret.txt",  # through a symlinked directory
        ):
            message = error(
                await client.call_tool("upload_file", {"path": "s.txt", "local_path": local_path})
            )
            assert "outside the allowed directories" in message, local_path
        ok(await client.call_tool("upload_file", {"path": "s.txt", "content": "data"}))
        for local_path in ("drop.txt", "linkdir/new.txt", str(outside / "new.txt")):
            message = error(
                await client.call_tool("download_file", {"path": "s.txt", "local_path": local_path})
            )
            assert "outside the allowed directories" in message, local_path
        files = ok(await client.call_tool("list_files", {}))["files"]
    assert "/mnt/data/s.txt" in {f["path"] for f in files}
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
