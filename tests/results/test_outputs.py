"""Output budgets and images, through the protocol against the local pool: a flood of stdout
becomes a bounded result plus a spill file with the full text; an oversized figure comes back
within its byte budget with the full-size file kept in the session."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from mcp import Client
from mcp.types import TextResourceContents
from PIL import Image as PILImage

from dynamic_sessions_mcp import outputs, results
from dynamic_sessions_mcp.pools.base import Execution, Image, PoolType
from dynamic_sessions_mcp.pools.rest import RestPool, connect_rest_pool
from tests.bridge.helpers import ok, text
from tests.conftest import PoolServer
from tests.results.conftest import WebBridge, http_identifier, web_bridge

pytestmark = pytest.mark.anyio

MAX_CHARS = 16_000  # the default DSMCP_OUTPUT_MAX_CHARS
IMAGE_MAX = 256 * 1024  # the default DSMCP_IMAGE_MAX_BYTES
LINES = 100_000
# 100,000 lines of 100 characters: 10,000,000 characters of stdout.
FLOOD = "import sys\nfor i in range(100_000):\n    sys.stdout.write(f'{i:08d} ' + 'y' * 90 + '\\n')"
MARKER = re.compile(r"… \[([\d,]+) characters in ([\d,]+) lines omitted here; full text: (\S+)\] …\n")
# A 1800x1800 figure of noise: a PNG of several MB that no client should receive whole.
FIGURE = (
    "import numpy as np, matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(12, 12), dpi=150)\n"
    "ax.imshow(np.random.default_rng(0).random((600, 600)))\n"
    "plt.show()"
)


@pytest.fixture(scope="module")
def web(python_pool: PoolServer) -> Iterator[WebBridge]:
    with web_bridge(python_pool) as bridge:
        yield bridge


@pytest.fixture
async def rest_pool(python_pool: PoolServer) -> AsyncIterator[RestPool]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {python_pool.token}"}) as http:
        yield await connect_rest_pool(
            endpoint=python_pool.url,
            api_version="2025-10-02-preview",
            pool_type=PoolType.PYTHON,
            http=http,
            auth=None,
        )


def full_flood() -> str:
    return "".join(f"{i:08d} " + "y" * 90 + "\n" for i in range(LINES))


async def test_ten_megabytes_of_stdout_become_a_bounded_result_and_a_spill_file(web: WebBridge) -> None:
    async with Client(web.url) as client:
        result = await client.call_tool("run_python", {"code": FLOOD, "timeout_seconds": 120})
        data = ok(result)
        stdout = data["stdout"]
        assert data["truncated"] is True and len(stdout) <= MAX_CHARS + 200
        assert len(text(result)) <= MAX_CHARS + 1000
        head, tail = MARKER.split(stdout)[0], MARKER.split(stdout)[-1]
        omitted_chars, omitted_lines, spill_path = MARKER.search(stdout).groups()  # type: ignore[union-attr]
        assert head.startswith("00000000 ") and tail.endswith(f"{LINES - 1:08d} " + "y" * 90 + "\n")
        # Cut at line breaks, and the counts are exact.
        kept_lines = head.count("\n") + tail.count("\n")
        assert int(omitted_lines.replace(",", "")) == LINES - kept_lines
        assert int(omitted_chars.replace(",", "")) == 100 * (LINES - kept_lines)
        (saved,) = data["saved"]
        assert saved["kind"] == "stdout" and saved["path"] == spill_path and saved["size"] == 100 * LINES
        assert spill_path.startswith("/mnt/data/.outputs/") and spill_path in text(result)
        links = [block for block in result.content if block.type == "resource_link"]
        assert [str(link.uri) for link in links] == [saved["uri"]]

        # The spill file holds the full text, readable as a resource.
        read = await client.read_resource(saved["uri"])
        (contents,) = read.contents
        assert isinstance(contents, TextResourceContents) and contents.mime_type == "text/plain"
        assert (
            hashlib.sha256(contents.text.encode()).digest() == hashlib.sha256(full_flood().encode()).digest()
        )


async def test_a_long_result_value_is_cut_and_saved(web: WebBridge) -> None:
    async with Client(web.url) as client:
        data = ok(await client.call_tool("run_python", {"code": "'z' * 40_000 + 'END'"}))
        assert data["truncated"] is True and data["result"].endswith("zEND") and len(data["result"]) < 17_000
        (saved,) = data["saved"]
        assert saved["kind"] == "result" and saved["size"] == 40_003


async def test_the_pool_is_asked_for_the_spill_limit_and_its_cut_is_reported(python_pool: PoolServer) -> None:
    """outputStreamsMaxLength follows DSMCP_OUTPUT_SPILL_MAX_BYTES; a stream that reaches it is
    reported as possibly cut by the pool, never silently."""
    with web_bridge(python_pool, output_spill_max_bytes=100_000) as small:
        async with Client(small.url) as client:
            result = await client.call_tool("run_python", {"code": "print('w' * 300_000)"})
            data = ok(result)
    (saved,) = data["saved"]
    assert saved["size"] == 100_000  # the pool cut at the limit the bridge asked for
    assert "the pool may have cut stdout/stderr at 100,000 bytes" in text(result)


async def test_an_oversized_figure_comes_back_within_its_budget(web: WebBridge) -> None:
    async with Client(web.url) as client:
        result = await client.call_tool("run_python", {"code": FIGURE})
    data = ok(result)
    (image,) = [block for block in result.content if block.type == "image"]
    attached = base64.b64decode(image.data)
    (saved,) = [s for s in data["saved"] if s["kind"] == "image"]
    assert data["images"] == 1
    assert len(attached) <= IMAGE_MAX < saved["size"]
    with PILImage.open(io.BytesIO(attached)) as shown:
        assert shown.width >= 200 and image.mime_type == f"image/{str(shown.format).lower()}"
        print(
            f"figure: {saved['size']:,} bytes full size -> {len(attached):,} bytes attached "
            f"({shown.format} {shown.width}x{shown.height})"
        )
    # The one-line fallback names the count and where the full-size file is.
    line = next(line for line in text(result).splitlines() if line.startswith("images:"))
    assert "images: 1, 1 attached" in line and saved["path"] in line and "reduced to fit" in line


async def test_images_over_the_per_call_cap_are_saved_but_not_attached(rest_pool: RestPool) -> None:
    small = io.BytesIO()
    PILImage.new("RGB", (40, 30), (200, 30, 30)).save(small, "PNG")
    execution = Execution(succeeded=True, images=[Image("png", small.getvalue())] * 3)
    identifier = http_identifier("h-capcapcapcapcapcapcapcapc")
    limits = outputs.OutputLimits(max_chars=1000, image_max_bytes=IMAGE_MAX, max_images=2)
    shaped = await outputs.shape(rest_pool, identifier, execution, "cap", limits)
    assert len(shaped.images) == 2 and shaped.images_not_attached == 1
    assert [f.path for f in shaped.saved] == [f".outputs/cap-image-{n}.png" for n in (1, 2, 3)]
    shown = results.execution_result("h-x", shaped, reset=False)
    assert [block.type for block in shown.content].count("image") == 2
    assert "images: 3, 2 attached; 1 not attached" in text(shown)
    await rest_pool.end_session(identifier)


@pytest.mark.parametrize(
    ("source", "budget"),
    [
        ("".join(f"line {i}\n" for i in range(1000)), 200),
        ("x" * 5000, 100),  # no line breaks at all
        ("short\n", 100),
    ],
)
def test_cut_keeps_head_and_tail_and_counts_exactly(source: str, budget: int) -> None:
    piece = outputs.cut(source, budget)
    assert piece.head + source[len(piece.head) : len(source) - len(piece.tail)] + piece.tail == source
    assert piece.omitted_chars == len(source) - len(piece.head) - len(piece.tail)
    middle = source[len(piece.head) : len(source) - len(piece.tail)]
    assert piece.omitted_lines == middle.count("\n")
    assert len(piece.head) + len(piece.tail) <= budget
    if len(source) <= budget:
        assert not piece.cut and piece.head == source
    elif "\n" in source:
        assert piece.head.endswith("\n") and source[len(source) - len(piece.tail) - 1] == "\n"
