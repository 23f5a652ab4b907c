"""dynamic-sessions-mcp: an MCP bridge from AI agents to sandboxed code-execution pools."""

__version__ = "0.1.0"
