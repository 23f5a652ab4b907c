"""Serve MCP over stdio so that SIGTERM stops the server cleanly.

The SDK reads stdin in a worker thread, which cancellation cannot interrupt: on SIGTERM the
server would wait for the next line forever and never release its sessions. Here stdin is read
through the event loop (a non-blocking pipe reader), so a signal cancels the read at once and
the bridge's cleanup runs. When stdin is not a pipe (a regular file), the SDK's reader is used.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, cast

import anyio
from mcp.server import MCPServer
from mcp.server.stdio import stdio_server

# A JSON-RPC line carries at most an upload (base64) plus framing; see DSMCP_MAX_UPLOAD_BYTES.
_MAX_LINE = 256 * 1024 * 1024


class _PipeLines:
    """`async for line in ...` over stdin, read by the event loop."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _PipeLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


async def _claim_stdin() -> _PipeLines | None:
    """Move the wire off fd 0 (children then read /dev/null) onto an event-loop reader."""
    wire = os.dup(0)
    pipe = os.fdopen(wire, "rb", buffering=0)
    reader = asyncio.StreamReader(limit=_MAX_LINE)
    try:
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except ValueError:  # not a pipe, socket or character device
        pipe.close()
        return None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return _PipeLines(reader)


async def serve_stdio(mcp: MCPServer) -> None:
    """Serve until stdin closes or SIGTERM/SIGINT arrives; returns normally either way."""
    lines = await _claim_stdin()
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        if lines is None:
            await mcp.run_stdio_async()
        else:
            lowlevel = mcp._lowlevel_server  # the SDK's run_stdio_async, with our stdin reader
            async with stdio_server(stdin=cast(Any, lines)) as (read_stream, write_stream):
                await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
        tg.cancel_scope.cancel()
