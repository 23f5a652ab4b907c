"""JSON-RPC 2.0 over HTTP POST to a session pool's built-in MCP endpoint (protocol 2025-03-26).

The endpoint is not a full MCP server (shared/reference/dynamic-sessions-api.md §9): it knows
initialize, tools/list and tools/call, takes the pool-wide key in `x-ms-apikey`, and answers plain
JSON (an SSE body is read too, in case it ever streams). The key never appears in logs or messages.
HTTP failures become PoolErrors with the REST backend's wording, except where an API key changes
what the operator must fix (401, 403, a 404 at initialize, 400).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from dynamic_sessions_mcp import __version__
from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind
from dynamic_sessions_mcp.pools.pool_http import (
    Call,
    backoff_s,
    pool_message,
    retry_after_s,
    status_error,
    transport_error,
    truncate,
)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-03-26"
API_KEY_HEADER = "x-ms-apikey"
_SESSION_HEADER = "mcp-session-id"
_FIX_SETTINGS = (
    "Set DSMCP_POOL_API_KEY to the key that fetchMCPServerCredentials returns for this pool, and "
    "DSMCP_POOL_ENDPOINT to the pool's mcpServerEndpoint (properties.mcpServerSettings.mcpServerEndpoint)."
)


class RpcError(Exception):
    """The endpoint answered a JSON-RPC error object."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class ToolResult:
    """A tools/call result: its structuredContent (when an object), its text content, isError."""

    structured: dict[str, Any] | None
    text: str
    is_error: bool


class RpcClient:
    """Sends JSON-RPC requests over the shared client; initialize() must come first."""

    def __init__(
        self, *, endpoint: str, api_key: str, http: httpx.AsyncClient, retry_budget_s: float
    ) -> None:
        self.endpoint = endpoint
        self._key = api_key
        self._http = http
        self._retry_budget_s = retry_budget_s
        self._ids = itertools.count(1)
        self._session_id: str | None = None  # Mcp-Session-Id, if the endpoint hands one out

    async def initialize(self) -> dict[str, Any]:
        """The handshake; also run again when the endpoint forgets an Mcp-Session-Id (404)."""
        self._session_id = None
        params = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "dynamic-sessions-mcp", "version": __version__},
        }
        result, response = await self._request("initialize", params, idempotent=True, initializing=True)
        self._session_id = response.headers.get(_SESSION_HEADER) or None
        if result.get("protocolVersion") != PROTOCOL_VERSION:
            logger.info("the MCP endpoint speaks protocol %s", result.get("protocolVersion"))
        await self._notify("notifications/initialized")
        return result

    async def list_tools(self) -> list[str]:
        names: list[str] = []
        cursor: str | None = None
        while True:
            params = {"cursor": cursor} if cursor else {}
            result, _ = await self._request("tools/list", params, idempotent=True)
            tools = result.get("tools")
            names.extend(
                str(t["name"]) for t in (tools if isinstance(tools, list) else []) if isinstance(t, dict)
            )
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                return names
            cursor = next_cursor

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        limits: httpx.Timeout | None = None,
        idempotent: bool,
        is_execution: bool = False,
    ) -> ToolResult:
        params = {"name": name, "arguments": arguments}
        result, _ = await self._request(
            "tools/call", params, idempotent=idempotent, limits=limits, is_execution=is_execution
        )
        structured = result.get("structuredContent")
        content = result.get("content")
        texts = [
            str(c.get("text") or "")
            for c in (content if isinstance(content, list) else [])
            if isinstance(c, dict) and c.get("type") == "text"
        ]
        return ToolResult(
            structured=structured if isinstance(structured, dict) else None,
            text="\n".join(texts),
            is_error=result.get("isError") is True,
        )

    # ---- HTTP -------------------------------------------------------------------------------

    async def _notify(self, method: str) -> None:
        """Send a notification; the endpoint may not know it, which is harmless."""
        try:
            response = await self._http.post(
                self.endpoint, json={"jsonrpc": "2.0", "method": method}, headers=self._headers()
            )
        except httpx.HTTPError as exc:
            logger.debug("MCP %s not delivered: %s", method, type(exc).__name__)
            return
        logger.debug("MCP %s -> %d", method, response.status_code)

    def _headers(self) -> dict[str, str]:
        headers = {
            API_KEY_HEADER: self._key,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self._session_id:
            headers[_SESSION_HEADER] = self._session_id
        return headers

    async def _request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        idempotent: bool,
        limits: httpx.Timeout | None = None,
        is_execution: bool = False,
        initializing: bool = False,
    ) -> tuple[dict[str, Any], httpx.Response]:
        """One JSON-RPC call: its `result` and the HTTP response, or RpcError / PoolError.

        Retries only what cannot run anything twice: idempotent calls on connect failures and
        429/503 (honouring Retry-After) within the retry budget, any call whose connection was
        refused, and any call once after the endpoint forgot our Mcp-Session-Id (404).
        """
        call = Call(
            "POST",
            "",
            {},
            limits or self._http.timeout,
            idempotent=idempotent,
            is_execution=is_execution,
        )
        deadline = time.monotonic() + self._retry_budget_s
        attempt = 0
        reinitialized = False
        while True:
            request_id = next(self._ids)
            body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            started = time.monotonic()
            try:
                response = await self._http.post(
                    self.endpoint, json=body, headers=self._headers(), timeout=call.timeout
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                retryable = idempotent or isinstance(exc, httpx.ConnectError)
                delay = backoff_s(attempt)
                if not retryable or time.monotonic() + delay > deadline:
                    raise self._redacted(transport_error(exc, call)) from exc
            except httpx.RequestError as exc:
                raise self._redacted(transport_error(exc, call)) from exc
            else:
                elapsed_ms = (time.monotonic() - started) * 1000
                logger.debug("MCP %s -> %d in %.0f ms", method, response.status_code, elapsed_ms)
                if response.is_success:
                    try:
                        return _rpc_result(response, request_id), response
                    except RpcError as exc:
                        raise RpcError(exc.code, self._scrub(exc.message)) from None
                    except PoolError as exc:
                        raise self._redacted(exc) from None
                if response.status_code == 404 and self._session_id and not reinitialized:
                    reinitialized = True  # the request was not processed: start a new MCP session
                    await self.initialize()
                    continue
                retry_after = retry_after_s(response)
                delay = retry_after if retry_after is not None else backoff_s(attempt)
                if (
                    not idempotent
                    or response.status_code not in (429, 503)
                    or time.monotonic() + delay > deadline
                ):
                    raise self._redacted(_http_error(response, call, initializing=initializing))
            logger.debug("retrying MCP %s in %.2f s (attempt %d)", method, delay, attempt + 2)
            await asyncio.sleep(delay)
            attempt += 1

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _redacted(self, error: PoolError) -> PoolError:
        return PoolError(error.kind, self._scrub(error.message), status=error.status)


def _http_error(response: httpx.Response, call: Call, *, initializing: bool) -> PoolError:
    status = response.status_code
    said = pool_message(response)
    detail = f" The endpoint said: {said}{'' if said.endswith(('.', '!', '?', '…')) else '.'}" if said else ""
    if status == 401:
        return PoolError(
            PoolErrorKind.AUTH,
            f"The pool's MCP endpoint refused the API key (HTTP 401).{detail} {_FIX_SETTINGS} A key "
            "regenerated in the last 5 minutes may still be cached by the pool: retry shortly.",
            status=401,
        )
    if status == 403:
        return PoolError(
            PoolErrorKind.FORBIDDEN,
            f"The pool's MCP endpoint refused access (HTTP 403).{detail} API-key access may be disabled "
            f"on this pool (isMcpServerApiKeyDisabled), or the key is another pool's. {_FIX_SETTINGS}",
            status=403,
        )
    if status == 404 and initializing:
        return PoolError(
            PoolErrorKind.CONFIG,
            f"No MCP endpoint answers at DSMCP_POOL_ENDPOINT (HTTP 404).{detail} With DSMCP_POOL_AUTH="
            "api-key, DSMCP_POOL_ENDPOINT must be the pool's mcpServerEndpoint (not its "
            "poolManagementEndpoint), and the pool must have its MCP server enabled "
            "(mcpServerSettings.isMCPServerEnabled).",
            status=404,
        )
    if status == 400:
        return PoolError(
            PoolErrorKind.BAD_REQUEST,
            f"The pool's MCP endpoint rejected the request (HTTP 400).{detail}",
            status=400,
        )
    return status_error(response, call, PROTOCOL_VERSION)


def _rpc_result(response: httpx.Response, request_id: int) -> dict[str, Any]:
    """The `result` object of our request's answer (plain JSON or an SSE stream); RpcError for an
    error object."""
    message: Any = None
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        message = next((m for m in _sse_messages(response.text) if m.get("id") == request_id), None)
    else:
        try:
            message = response.json()
        except ValueError:
            message = None
    if not isinstance(message, dict):
        raise PoolError(
            PoolErrorKind.SERVER,
            f"The pool's MCP endpoint sent an answer that is not JSON-RPC (HTTP {response.status_code}): "
            f"{truncate(response.text) or 'empty'}. Check that DSMCP_POOL_ENDPOINT is the pool's "
            "mcpServerEndpoint.",
            status=response.status_code,
        )
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        raise RpcError(code if isinstance(code, int) else None, str(error.get("message") or error))
    result = message.get("result")
    if not isinstance(result, dict):
        raise PoolError(
            PoolErrorKind.SERVER,
            "The pool's MCP endpoint answered without a result; retry.",
            status=response.status_code,
        )
    return result


def _sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON objects carried by the `data:` lines of an SSE body, one per event."""
    messages: list[dict[str, Any]] = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:"))
        if not data:
            continue
        try:
            value = json.loads(data)
        except ValueError:
            continue
        if isinstance(value, dict):
            messages.append(value)
    return messages
