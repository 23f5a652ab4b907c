"""Pool values -> what the client sees: a concise text for the model, images as image content,
resource links for files, and a structuredContent for programs. Every result names its session
handle."""

from __future__ import annotations

import base64
import mimetypes
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
)
from pydantic import BaseModel, Field

from dynamic_sessions_mcp import outputs
from dynamic_sessions_mcp.file_links import SignedUrl
from dynamic_sessions_mcp.paths import display_path
from dynamic_sessions_mcp.pools.base import Execution, FileInfo

RESET_NOTICE = (
    "This session's sandbox was recycled by the pool (idle timeout, a crash, or a restart): "
    "variables and files were reset."
)
URI_SCHEME = "sandbox"
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_TEXTUAL_TYPES = frozenset(
    {"application/json", "application/xml", "application/javascript", "application/x-sh"}
)


class SavedOutput(BaseModel):
    kind: str = Field(description="stdout, stderr, result or image.")
    path: str = Field(description="Absolute path of the file in the session.")
    uri: str = Field(description="MCP resource URI of the file (resources/read).")
    size: int


class ExecutionResult(BaseModel):
    session: str = Field(description="Session handle: pass it back as `session` to keep this state.")
    status: str = Field(description="'succeeded', 'failed', or 'running' (continuing in the background).")
    exit_code: int = Field(
        description="Process exit code; for Python code 0, or 1 when it raised; -1 while running."
    )
    stdout: str = Field(description="Standard output; when long, its head and tail around a marker.")
    stderr: str = Field(description="Standard error; when long, its head and tail around a marker.")
    result: Any = Field(default=None, description="JSON value of the last expression (Python), or null.")
    images: int = Field(description="How many images are attached as image content.")
    duration_ms: int
    notice: str = Field(default="", description="Anything the agent must know, e.g. a reset session.")
    execution: str = Field(
        default="", description="Execution handle: pass it to get_execution to fetch a background run."
    )
    truncated: bool = Field(default=False, description="True when stdout, stderr or result were cut.")
    saved: list[SavedOutput] = Field(
        default_factory=list, description="Session files holding full outputs and full-size images."
    )


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


class DownloadResult(FileResult):
    uri: str = Field(default="", description="MCP resource URI of the file (resources/read).")
    attached: bool = Field(default=False, description="True when the content is in this result.")
    url: str = Field(default="", description="Signed URL to GET the file (large files, HTTP only).")
    url_expires: str = Field(default="", description="When `url` stops working (ISO 8601, UTC).")
    local_path: str = Field(default="", description="Where the file was saved on this machine (stdio).")


class FileUrlResult(BaseModel):
    session: str
    path: str
    method: str = Field(description="GET to download, PUT (the raw bytes as the body) to upload.")
    url: str
    expires: str = Field(description="When the URL stops working (ISO 8601, UTC).")


class SessionResult(BaseModel):
    session: str
    ended: bool = Field(default=False, description="True when end_session released a sandbox.")


def _result(text: str, structured: BaseModel, extra: list[Any] | None = None) -> CallToolResult:
    blocks: list[Any] = [TextContent(type="text", text=text), *(extra or [])]
    return CallToolResult(content=blocks, structured_content=structured.model_dump(mode="json"))


def session_uri(handle: str, pool_path: str) -> str:
    """The resource URI of a session file: sandbox://{session}/{path under /mnt/data}."""
    return f"{URI_SCHEME}://{handle}/{quote(pool_path, safe='/')}"


def _status_line(handle: str, execution: Execution, execution_handle: str) -> tuple[str, int]:
    status = "succeeded" if execution.succeeded else "failed"
    exit_code = execution.exit_code if execution.exit_code is not None else (0 if execution.succeeded else 1)
    where = f"session {handle}" + (f" · execution {execution_handle}" if execution_handle else "")
    if execution.exit_code is not None:
        return f"[{status}, exit code {exit_code}, in {execution.duration_ms} ms · {where}]", exit_code
    return f"[{status} in {execution.duration_ms} ms · {where}]", exit_code


def _bounded(piece: outputs.Cut, saved: outputs.SavedFile | None) -> str:
    """The text the model sees: whole, or head + a marker with exact counts + tail."""
    if not piece.cut:
        return piece.head
    where = f"full text: {display_path(saved.path)}" if saved else "the full text could not be saved"
    marker = (
        f"… [{piece.omitted_chars:,} characters in {piece.omitted_lines:,} lines omitted here; {where}] …"
    )
    head = piece.head if piece.head.endswith("\n") or not piece.head else piece.head + "\n"
    return f"{head}{marker}\n{piece.tail}"


def _images_line(shaped: outputs.Shaped) -> str:
    """One line that stands in for the images when a client drops image content."""
    total = len(shaped.execution.images)
    attached = len(shaped.images)
    parts = [f"images: {total}, {attached} attached"]
    reduced = [i.fitted for i in shaped.images if i.fitted.reduced]
    if reduced:
        parts.append(
            "reduced to fit: "
            + ", ".join(f"{f.original_bytes:,} → {len(f.data):,} bytes ({f.format})" for f in reduced)
        )
    if shaped.images_not_attached:
        parts.append(f"{shaped.images_not_attached} not attached (over the per-call cap or too large)")
    saved = [f for f in shaped.saved if f.kind == "image"]
    if saved:
        parts.append("full size: " + ", ".join(display_path(f.path) for f in saved))
    return "; ".join(parts)


def execution_result(
    handle: str, shaped: outputs.Shaped, *, reset: bool, execution_handle: str = ""
) -> CallToolResult:
    execution = shaped.execution
    status_line, exit_code = _status_line(handle, execution, execution_handle)
    notice = RESET_NOTICE if reset else ""
    lines = [f"NOTE: {notice}", status_line] if notice else [status_line]
    stdout = _bounded(shaped.stdout, shaped.saved_as("stdout"))
    stderr = _bounded(shaped.stderr, shaped.saved_as("stderr"))
    if stdout:
        lines.append("stdout:\n" + stdout.rstrip("\n"))
    if stderr:
        lines.append("stderr:\n" + stderr.rstrip("\n"))
    if shaped.result_cut is not None:
        lines.append("result: " + _bounded(shaped.result_cut, shaped.saved_as("result")))
    elif execution.result is not None:
        lines.append("result: " + outputs.render_value(execution.result))
    if execution.images:
        lines.append(_images_line(shaped))
    lines.extend(f"NOTE: {note}" for note in shaped.notes)
    if len(lines) == 1 + bool(notice):
        lines.append("(no output)")
    blocks: list[Any] = [
        ImageContent(
            type="image", data=base64.b64encode(i.fitted.data).decode(), mime_type=i.fitted.mime_type
        )
        for i in shaped.images
    ]
    saved = [
        SavedOutput(kind=f.kind, path=display_path(f.path), uri=session_uri(handle, f.path), size=f.size)
        for f in shaped.saved
    ]
    blocks.extend(_link(s.uri, s.path, s.size, content_type(s.path, None)) for s in saved)
    structured = ExecutionResult(
        session=handle,
        status="succeeded" if execution.succeeded else "failed",
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        result=shaped.result,
        images=len(shaped.images),
        duration_ms=execution.duration_ms,
        notice=notice,
        execution=execution_handle,
        truncated=shaped.truncated,
        saved=saved,
    )
    return _result("\n".join(lines), structured, blocks)


def running_result(
    handle: str, execution_handle: str, wait_s: int, *, elapsed_s: float | None, reset: bool
) -> CallToolResult:
    """A run that outlived the call budget: it continues in the background under a handle."""
    notice = RESET_NOTICE if reset else ""
    after = f" after {elapsed_s:.0f} s" if elapsed_s is not None else ""
    text = (
        f"[running in the background{after} · session {handle} · execution {execution_handle}]\n"
        "The run continues in its session, which is busy until it ends. Call get_execution with "
        f'execution "{execution_handle}" (wait_seconds up to {wait_s}) to wait for its result; '
        "end_session stops it."
    )
    structured = ExecutionResult(
        session=handle,
        status="running",
        exit_code=-1,
        stdout="",
        stderr="",
        images=0,
        duration_ms=int((elapsed_s or 0) * 1000),
        notice=notice,
        execution=execution_handle,
    )
    return _result(f"NOTE: {notice}\n{text}" if notice else text, structured)


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


def upload_result(handle: str, info: FileInfo, source: str = "") -> CallToolResult:
    path = display_path(info.path)
    origin = f" from {source}" if source else ""
    text = f"wrote {path} ({info.size} bytes){origin} · session {handle}"
    return _result(text, FileResult(session=handle, path=path, size=info.size))


def content_type(pool_path: str, reported: str | None) -> str:
    reported = (reported or "").split(";")[0].strip().lower()
    if reported and reported != "application/octet-stream":
        return reported
    guessed, _ = mimetypes.guess_type(pool_path)
    return guessed or "application/octet-stream"


def as_text(data: bytes, content_type: str) -> str | None:
    """The content as text when it is text (by type, or undeclared but valid UTF-8 without NUL)."""
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


def _link(uri: str, path: str, size: int, mime_type: str | None = None) -> ResourceLink:
    name = path.rsplit("/", 1)[-1]
    return ResourceLink(type="resource_link", uri=uri, name=name, mime_type=mime_type, size=size)


def download_result(handle: str, pool_path: str, data: bytes, reported_type: str | None) -> CallToolResult:
    path = display_path(pool_path)
    mime = content_type(pool_path, reported_type)
    size = len(data)
    uri = session_uri(handle, pool_path)
    structured = DownloadResult(
        session=handle, path=path, size=size, content_type=mime, uri=uri, attached=True
    )
    header = f"{path} ({size} bytes, {mime}) · session {handle}"
    if mime in _IMAGE_TYPES:
        image = ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime)
        return _result(header, structured, [image])
    text = as_text(data, mime)
    if text is not None:
        structured.content_type = mime if mime != "application/octet-stream" else "text/plain"
        return _result(f"{header}\n{text}", structured)
    blob = BlobResourceContents(uri=uri, mime_type=mime, blob=base64.b64encode(data).decode())
    return _result(
        header + "\n(binary content attached as an embedded resource)",
        structured,
        [EmbeddedResource(type="resource", resource=blob)],
    )


@dataclass(frozen=True)
class LargeFileOptions:
    """What the bridge can offer for a file too large to attach."""

    inline_limit: int
    resource_limit: int
    url: SignedUrl | None  # HTTP transports with a public URL
    local_dirs: str  # stdio with DSMCP_LOCAL_FILE_DIRS: where local_path may point


def large_file_result(
    handle: str, pool_path: str, size: int | None, reported_type: str | None, options: LargeFileOptions
) -> CallToolResult:
    """A file over the inline limit: a resource link, a signed URL, or a local-path hint instead."""
    path = display_path(pool_path)
    mime = content_type(pool_path, reported_type)
    uri = session_uri(handle, pool_path)
    known = size if size is not None else 0
    lines = [
        f"{path} ({size:,} bytes, {mime}) · session {handle}" if size is not None else f"{path} ({mime})",
        f"It is over the {options.inline_limit:,}-byte limit for tool results, so it is not attached.",
    ]
    if size is not None and size <= options.resource_limit:
        lines.append(f"Your client can read it as the resource {uri} (resources/read).")
    if options.url is not None:
        lines.append(f"Download it within {_minutes(options.url)} with: GET {options.url.url}")
    if options.local_dirs:
        lines.append(f"Or pass local_path to save it on this machine (allowed: {options.local_dirs}).")
    lines.append("Or read a part of it with run_python or run_shell (e.g. head), or compress it.")
    structured = DownloadResult(
        session=handle,
        path=path,
        size=known,
        content_type=mime,
        uri=uri,
        url=options.url.url if options.url else "",
        url_expires=options.url.expires_iso if options.url else "",
    )
    return _result("\n".join(lines), structured, [_link(uri, path, known, mime)])


def local_download_result(
    handle: str, pool_path: str, size: int, reported_type: str | None, local_path: str
) -> CallToolResult:
    path = display_path(pool_path)
    mime = content_type(pool_path, reported_type)
    structured = DownloadResult(
        session=handle,
        path=path,
        size=size,
        content_type=mime,
        uri=session_uri(handle, pool_path),
        local_path=local_path,
    )
    return _result(f"saved {path} ({size:,} bytes) to {local_path} · session {handle}", structured)


def file_url_result(handle: str, pool_path: str, signed: SignedUrl) -> CallToolResult:
    path = display_path(pool_path)
    if signed.method == "PUT":
        how = (
            f"Upload {path} within {_minutes(signed)}: PUT the raw file bytes as the request body, e.g. "
            f"curl -T <local file> '{signed.url}'"
        )
    else:
        how = f"Download {path} within {_minutes(signed)}: GET {signed.url}"
    text = (
        f"{how}\nAnyone holding the URL can use it until it expires; the machine using it needs network "
        f"access to this server · session {handle}"
    )
    structured = FileUrlResult(
        session=handle, path=path, method=signed.method, url=signed.url, expires=signed.expires_iso
    )
    return _result(text, structured)


def _minutes(signed: SignedUrl) -> str:
    remaining = max(0, signed.expires_at - int(time.time()))
    return f"{remaining // 60} min" if remaining >= 120 else f"{remaining} s"


def session_result(handle: str, text: str, *, ended: bool = False) -> CallToolResult:
    return _result(text, SessionResult(session=handle, ended=ended))
