"""The public interface as a client sees it on the wire: a snapshot of tools/list.

A change here must be deliberate: regenerate with
`DSMCP_UPDATE_SNAPSHOT=1 pytest tests/bridge/test_interface.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server import MCPServer

pytestmark = pytest.mark.anyio
SNAPSHOT = Path(__file__).with_name("tools_list.snapshot.json")
TOOLS = {
    "run_python",
    "run_shell",
    "upload_file",
    "download_file",
    "list_files",
    "new_session",
    "end_session",
    "get_execution",
}


async def wire_tools(bridge: MCPServer, era: str) -> list[dict[str, Any]]:
    async with Client(bridge, mode=era) as client:
        listed = await client.list_tools()
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools]


def walk(schema: Any) -> list[str]:
    """Every key/shape Foundry rejects: anyOf/oneOf/allOf and multi-type `type` lists."""
    found: list[str] = []
    if isinstance(schema, dict):
        found += [k for k in ("anyOf", "oneOf", "allOf") if k in schema]
        if isinstance(schema.get("type"), list):
            found.append("type list")
        for value in schema.values():
            found += walk(value)
    elif isinstance(schema, list):
        for value in schema:
            found += walk(value)
    return found


@pytest.mark.parametrize("era", ["auto", "legacy"])
async def test_tools_list_matches_the_snapshot(bridge: MCPServer, era: str) -> None:
    tools = await wire_tools(bridge, era)
    if os.environ.get("DSMCP_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(tools, indent=2, ensure_ascii=False) + "\n")
    assert tools == json.loads(SNAPSHOT.read_text())


async def test_schemas_are_flat_and_annotations_honest(bridge: MCPServer) -> None:
    tools = {t["name"]: t for t in await wire_tools(bridge, "auto")}
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert walk(tool["inputSchema"]) == [], name
        assert "session" in tool["outputSchema"]["properties"], name
        if name not in ("new_session", "get_execution"):  # an execution handle names its session
            assert tool["inputSchema"]["properties"]["session"]["default"] == ""
    assert tools["list_files"]["annotations"]["readOnlyHint"] is True
    assert tools["download_file"]["annotations"]["readOnlyHint"] is True
    assert tools["run_python"]["annotations"]["destructiveHint"] is True
    assert (
        "python pool" in tools["run_python"]["description"].lower()
        or "IPython" in tools["run_python"]["description"]
    )
    assert "/mnt/data" in tools["run_shell"]["description"]


async def test_instructions_explain_handles(bridge: MCPServer) -> None:
    async with Client(bridge, mode="legacy") as client:
        instructions = client.instructions
    assert instructions and "session" in instructions and "python session pool" in instructions
