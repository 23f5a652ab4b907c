"""Short-lived signed URLs for large files, served by the bridge's own HTTP server: GET streams a
session file down, PUT streams one up, with bounded memory whatever the size.

The URL is the authorisation: `{public_url}/files/{token}`, where the token carries the pool
identifier and the path, encrypted (an HMAC-SHA256 keystream) so the model never sees the
identifier, and an HMAC tag over method, identifier, path and expiry. Keys are derived from the
session secret, so every replica accepts every replica's URLs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dynamic_sessions_mcp.identity import log_id
from dynamic_sessions_mcp.paths import display_path
from dynamic_sessions_mcp.pools.base import Pool, PoolError, PoolErrorKind

logger = logging.getLogger(__name__)

ROUTE = "/files/{token}"
_VERSION = 1
_NONCE_LEN = 12
_TAG_LEN = 16
_HEADER = struct.Struct(">BI")  # version, expiry (unix seconds)
METHODS = ("GET", "PUT")


class LinkRefused(Exception):
    """The URL is malformed, tampered with, for another method, or expired; str() says which."""


@dataclass(frozen=True)
class SignedUrl:
    url: str
    method: str
    expires_at: int  # unix seconds

    @property
    def expires_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Grant:
    identifier: str
    path: str  # relative to /mnt/data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Mints and opens signed file URLs."""

    def __init__(self, secret: bytes, base_url: str, ttl_s: int) -> None:
        self._enc_key = hmac.new(secret, b"dsmcp signed-url encryption", hashlib.sha256).digest()
        self._mac_key = hmac.new(secret, b"dsmcp signed-url signature", hashlib.sha256).digest()
        self._base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def _keystream(self, nonce: bytes, length: int) -> bytes:
        blocks = (length + 31) // 32
        stream = b"".join(
            hmac.new(self._enc_key, nonce + struct.pack(">I", i), hashlib.sha256).digest()
            for i in range(blocks)
        )
        return stream[:length]

    def _tag(self, method: str, identifier: str, path: str, header: bytes, nonce: bytes) -> bytes:
        message = b"\0".join((method.encode(), identifier.encode(), path.encode(), header, nonce))
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()[:_TAG_LEN]

    def sign(self, method: str, identifier: str, path: str, now: float | None = None) -> SignedUrl:
        expires_at = int(now if now is not None else time.time()) + self.ttl_s
        header = _HEADER.pack(_VERSION, expires_at)
        nonce = secrets.token_bytes(_NONCE_LEN)
        plain = f"{identifier}\0{path}".encode()
        sealed = bytes(a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True))
        token = _b64(header + nonce + sealed + self._tag(method, identifier, path, header, nonce))
        return SignedUrl(f"{self._base_url}/files/{token}", method, expires_at)

    def open(self, token: str, method: str, now: float | None = None) -> Grant:
        try:
            raw = _unb64(token)
        except (binascii.Error, ValueError):
            raise LinkRefused("malformed link") from None
        if len(raw) < _HEADER.size + _NONCE_LEN + _TAG_LEN + 3:
            raise LinkRefused("malformed link")
        header, rest = raw[: _HEADER.size], raw[_HEADER.size :]
        version, expires_at = _HEADER.unpack(header)
        nonce, sealed, tag = rest[:_NONCE_LEN], rest[_NONCE_LEN:-_TAG_LEN], rest[-_TAG_LEN:]
        plain = bytes(a ^ b for a, b in zip(sealed, self._keystream(nonce, len(sealed)), strict=True))
        identifier, _, path = plain.decode("utf-8", "replace").partition("\0")
        if version != _VERSION or not hmac.compare_digest(
            tag, self._tag(method, identifier, path, header, nonce)
        ):
            raise LinkRefused("invalid signature (tampered link, or a link for another method)")
        if (now if now is not None else time.time()) >= expires_at:
            raise LinkRefused("the link has expired; ask for a new one")
        return Grant(identifier, path)


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _pool_failure(exc: PoolError, path: str) -> JSONResponse:
    """Pool errors as a URL holder may see them: no operator detail."""
    if exc.kind is PoolErrorKind.NOT_FOUND:
        return _refused(404, f"no such file: {display_path(path)}")
    if exc.kind is PoolErrorKind.TOO_LARGE:
        return _refused(413, "the file is larger than the session pool accepts")
    return _refused(502, f"the session pool failed ({exc.kind.value}); try again")


def file_endpoint(signer: LinkSigner, pool: Pool) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint for ROUTE: GET streams the file out, PUT streams it in."""

    async def endpoint(request: Request) -> Response:
        try:
            grant = signer.open(request.path_params["token"], request.method)
        except LinkRefused as exc:
            return _refused(403, str(exc))
        if request.method == "GET":
            return await _download(pool, grant)
        return await _upload(pool, grant, request)

    return endpoint


async def _download(pool: Pool, grant: Grant) -> Response:
    try:
        stream = await pool.open_download(grant.identifier, grant.path)
    except PoolError as exc:
        return _pool_failure(exc, grant.path)
    name = grant.path.rsplit("/", 1)[-1]
    headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"}
    if stream.size is not None:
        headers["Content-Length"] = str(stream.size)
    logger.info("signed download of a file from session %s", log_id(grant.identifier))
    return StreamingResponse(
        stream.chunks,
        media_type=(stream.content_type or "application/octet-stream"),
        headers=headers,
        background=BackgroundTask(stream.close),
    )


async def _upload(pool: Pool, grant: Grant, request: Request) -> Response:
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else None
    try:
        info = await pool.upload_stream(grant.identifier, grant.path, request.stream(), size)
    except PoolError as exc:
        return _pool_failure(exc, grant.path)
    logger.info("signed upload of %d bytes to session %s", info.size, log_id(grant.identifier))
    return JSONResponse({"path": display_path(grant.path), "size": info.size}, status_code=201)
