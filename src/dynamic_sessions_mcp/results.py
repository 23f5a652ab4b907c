"""Pool values -> what the client sees: a concise text for the model, images as image content,
and a structuredContent for programs. Every result names its session handle."""

from __future__ import annotations

import base64
import json
import mimetypes
from typing import Any

from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    TextContent,
)
from pydantic import BaseModel, Field

from dynamic_sessions_mcp.paths import display_path
from dynamic_sessions_mcp.pools.base import Download, Execution, FileInfo

RESET_NOTICE = (
    "This session's sandbox was recycled by the pool (idle timeout, a crash, or a restart): "
    "variables and files were reset."
)
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_TEXTUAL_TYPES = frozenset(
    {"application/json", "application/xml", "application/javascript", "application/x-sh"}
)


class ExecutionResult(BaseModel):
    session: str = Field(description="Session handle: pass it back as `session` to keep this state.")
    status: str = Field(description="'succeeded' or 'failed'.")
    exit_code: int = Field(description="Process exit code; for Python code 0, or 1 when it raised.")
    stdout: str
    stderr: str
    result: Any = Field(default=None, description="JSON value of the last expression (Python), or null.")
    images: int = Field(description="How many images the execution displayed (sent as image content).")
    duration_ms: int
    notice: str = Field(default="", description="Anything the agent must know, e.g. a reset session.")


class FileEntry(BaseModel):
    path: str = Field(description="Absolute path under /mnt/data.")
    size: int
    is_dir: bool
    modified: str = Field(default="", description="Last modification time (ISO 8601) when known.")


class ListFilesResult(BaseModel):
    session: str
    path: str
    files: list[FileEntry]


class FileResult(BaseModel):
    session: str
    path: str
    size: int
    content_type: str = ""


class SessionResult(BaseModel):
    session: str
    ended: bool = Field(default=False, description="True when end_session released a sandbox.")


def _result(text: str, structured: BaseModel, extra: list[Any] | None = None) -> CallToolResult:
    blocks: list[Any] = [TextContent(type="text", text=text), *(extra or [])]
    return CallToolResult(content=blocks, structured_content=structured.model_dump(mode="json"))


def _render_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def execution_result(handle: str, execution: Execution, *, reset: bool) -> CallToolResult:
    status = "succeeded" if execution.succeeded else "failed"
    exit_code = execution.exit_code if execution.exit_code is not None else (0 if execution.succeeded else 1)
    notice = RESET_NOTICE if reset else ""
    lines = [f"[{status} in {execution.duration_ms} ms · session {handle}]"]
    if execution.exit_code is not None:
        lines[0] = f"[{status}, exit code {exit_code}, in {execution.duration_ms} ms · session {handle}]"
    if notice:
        lines.insert(0, f"NOTE: {notice}")
    if execution.stdout:
        lines.append("stdout:\n" + execution.stdout.rstrip("\n"))
    if execution.stderr:
        lines.append("stderr:\n" + execution.stderr.rstrip("\n"))
    if execution.result is not None:
        lines.append("result: " + _render_value(execution.result))
    if execution.images:
        lines.append(f"images: {len(execution.images)} (attached)")
    if len(lines) == 1 + bool(notice):
        lines.append("(no output)")
    images = [
        ImageContent(type="image", data=base64.b64encode(img.data).decode(), mime_type=f"image/{img.format}")
        for img in execution.images
    ]
    structured = ExecutionResult(
        session=handle,
        status=status,
        exit_code=exit_code,
        stdout=execution.stdout,
        stderr=execution.stderr,
        result=execution.result,
        images=len(execution.images),
        duration_ms=execution.duration_ms,
        notice=notice,
    )
    return _result("\n".join(lines), structured, images)


def file_listing(handle: str, pool_path: str, files: list[FileInfo]) -> CallToolResult:
    entries = [
        FileEntry(path=display_path(f.path), size=f.size, is_dir=f.is_dir, modified=f.modified or "")
        for f in sorted(files, key=lambda f: f.path)
    ]
    where = display_path(pool_path)
    if entries:
        body = "\n".join(f"{e.path}{'/' if e.is_dir else ''}  {'' if e.is_dir else e.size}" for e in entries)
    else:
        body = "(empty)"
    text = f"{len(entries)} entries in {where} · session {handle}\n{body}"
    return _result(text, ListFilesResult(session=handle, path=where, files=entries))


def upload_result(handle: str, info: FileInfo) -> CallToolResult:
    path = display_path(info.path)
    text = f"wrote {path} ({info.size} bytes) · session {handle}"
    return _result(text, FileResult(session=handle, path=path, size=info.size))


def _content_type(pool_path: str, reported: str | None) -> str:
    reported = (reported or "").split(";")[0].strip().lower()
    if reported and reported != "application/octet-stream":
        return reported
    guessed, _ = mimetypes.guess_type(pool_path)
    return guessed or "application/octet-stream"


def _as_text(data: bytes, content_type: str) -> str | None:
    textual = (
        content_type.startswith("text/") or content_type in _TEXTUAL_TYPES or content_type.endswith("+json")
    )
    if not textual and content_type != "application/octet-stream":
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if textual or "\0" not in text else None


def download_result(handle: str, pool_path: str, download: Download) -> CallToolResult:
    path = display_path(pool_path)
    content_type = _content_type(pool_path, download.content_type)
    size = len(download.data)
    structured = FileResult(session=handle, path=path, size=size, content_type=content_type)
    header = f"{path} ({size} bytes, {content_type}) · session {handle}"
    uri = f"sandbox://{path}"
    if content_type in _IMAGE_TYPES:
        image = ImageContent(
            type="image", data=base64.b64encode(download.data).decode(), mime_type=content_type
        )
        return _result(header, structured, [image])
    text = _as_text(download.data, content_type)
    if text is not None:
        structured.content_type = content_type if content_type != "application/octet-stream" else "text/plain"
        return _result(f"{header}\n{text}", structured)
    blob = BlobResourceContents(
        uri=uri, mime_type=content_type, blob=base64.b64encode(download.data).decode()
    )
    return _result(
        header + "\n(binary content attached as an embedded resource)",
        structured,
        [EmbeddedResource(type="resource", resource=blob)],
    )


def session_result(handle: str, text: str, *, ended: bool = False) -> CallToolResult:
    return _result(text, SessionResult(session=handle, ended=ended))
