"""Small helpers for reading what an MCP client sees."""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult


def ok(result: CallToolResult) -> dict[str, Any]:
    """The structuredContent of a successful call (fails the test with the text otherwise)."""
    assert not result.is_error, text(result)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def text(result: CallToolResult) -> str:
    first = result.content[0]
    assert first.type == "text"
    return first.text


def error(result: CallToolResult) -> str:
    assert result.is_error, f"expected a tool error, got: {text(result)}"
    return text(result)
