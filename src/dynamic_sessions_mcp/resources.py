"""Session files as MCP resources: `sandbox://{session}/{path}` is readable with resources/read,
so results can carry resource links instead of the bytes, and clients fetch what they need.

A read resolves the caller as tools do: the same handle from another principal reaches another
sandbox (where the file does not exist).
"""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.resources import BinaryResource, Resource, TextResource
from mcp.server.mcpserver.resources.templates import DEFAULT_RESOURCE_SECURITY, ResourceTemplate
from mcp.shared.uri_template import UriTemplate

from dynamic_sessions_mcp import results, tools
from dynamic_sessions_mcp.paths import PathRefused, display_path, to_pool_path
from dynamic_sessions_mcp.pools.base import PoolError

URI_TEMPLATE = f"{results.URI_SCHEME}://{{session}}/{{+path}}"


async def read_session_file(ctx: tools.Ctx, session: str, path: str) -> tuple[bytes | str, str]:
    """The file's content (text when it is text) and its MIME type."""
    state = ctx.request_context.lifespan_context
    try:
        pool_path = to_pool_path(path)
        target = tools.resolve(ctx, session)
    except (PathRefused, ToolError) as exc:
        raise ResourceError(str(exc)) from None
    if not pool_path:
        raise ResourceError("name a file under /mnt/data")
    limit = state.max_resource_bytes
    too_large = ResourceError(
        f"{display_path(pool_path)} is over the {limit:,}-byte limit for resources; fetch it with "
        "download_file (a signed URL or a local path) or read a part of it with run_shell"
    )
    try:
        stream = await state.pool.open_download(target.identifier, pool_path)
        try:
            if stream.size is not None and stream.size > limit:
                raise too_large
            data = await tools.read_capped(stream.chunks, limit)
        finally:
            await stream.close()
    except PoolError as exc:
        raise ResourceError(f"{exc.message} (session {target.handle})") from None
    if data is None:
        raise too_large
    mime = results.content_type(pool_path, stream.content_type)
    text = results.as_text(data, mime)
    if text is not None:
        return text, mime if mime != "application/octet-stream" else "text/plain"
    return data, mime


class _SessionFiles(ResourceTemplate):
    """The SDK's template gives every resource the template's one MIME type; a session holds
    files of every type, so this one reports each file's own."""

    async def create_resource(self, uri: str, params: dict[str, Any], context: Any) -> Resource:
        content, mime = await read_session_file(context, str(params["session"]), str(params["path"]))
        name = str(params["path"]).rsplit("/", 1)[-1]
        if isinstance(content, str):
            return TextResource(uri=uri, name=name, mime_type=mime, text=content)
        return BinaryResource(uri=uri, name=name, mime_type=mime, data=content)


def register(mcp: MCPServer) -> None:
    template = _SessionFiles(
        uri_template=URI_TEMPLATE,
        name="session_file",
        title="Session file",
        description=(
            "A file in a session's /mnt/data: sandbox://<session handle>/<path relative to /mnt/data>. "
            "Tool results link to these for saved outputs and large files."
        ),
        mime_type="application/octet-stream",
        fn=read_session_file,
        parameters={
            "type": "object",
            "properties": {"session": {"type": "string"}, "path": {"type": "string"}},
            "required": ["session", "path"],
        },
        context_kwarg="ctx",
        parsed_template=UriTemplate.parse(URI_TEMPLATE),
        security=DEFAULT_RESOURCE_SECURITY,
    )
    # mcp 2.3 offers templates only from functions (one MIME type each); add ours directly.
    mcp._resource_manager._templates[URI_TEMPLATE] = template
