"""How a pool's HTTP answers become PoolErrors an agent can act on, and when to retry.

Shared by every HTTP backend (the REST data plane and the pool's MCP endpoint), so a 401 or a 429
reads the same whichever backend met it.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind

MESSAGE_DETAIL_CHARS = 300
MAX_BACKOFF_S = 8.0


@dataclass(frozen=True)
class Call:
    """One HTTP call to the pool and how to judge its failures."""

    method: str
    path: str  # already encoded, relative to the endpoint
    query: Mapping[str, str]
    timeout: httpx.Timeout
    idempotent: bool
    # Set on file calls: a 404 then means "no such file", not "pool at capacity".
    file_path: str | None = None
    # Set on execution look-ups: a 404 then means "no such execution".
    execution_id: str | None = None
    json: Any = None
    files: Any = None
    # A streamed request body (sent once: never retried) and its headers.
    content: AsyncIterable[bytes] | None = None
    headers: Mapping[str, str] | None = None
    is_execution: bool = False
    stream: bool = False  # leave the response body unread (the caller streams it)


def truncate(text: str, limit: int = MESSAGE_DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s, ... capped at MAX_BACKOFF_S."""
    return random.uniform(0.5, 1.0) * min(MAX_BACKOFF_S, 0.25 * 2.0**attempt)


def retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def pool_message(response: httpx.Response) -> str:
    """The pool's own explanation (error.message, else the body or WWW-Authenticate), secrets removed."""
    text = ""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
        elif isinstance(payload.get("message"), str):
            text = payload["message"]
    elif response.content and not response.headers.get("content-type", "").startswith("text/html"):
        text = response.text
    if not text:
        text = response.headers.get("www-authenticate", "")
    authorization = response.request.headers.get("authorization", "")
    token = authorization.partition(" ")[2].strip()
    if token:
        text = text.replace(token, "***")
    return truncate(text) if text else ""


def not_found(path: str) -> PoolError:
    return PoolError(
        PoolErrorKind.NOT_FOUND,
        f"no such file: /mnt/data/{path} (use list_files to see what the session has).",
        status=404,
    )


def status_error(response: httpx.Response, call: Call, api_version: str) -> PoolError:
    status = response.status_code
    said = pool_message(response)
    detail = f" The pool said: {said}{'' if said.endswith(('.', '!', '?', '…')) else '.'}" if said else ""
    if status == 400:
        kind = PoolErrorKind.BAD_REQUEST
        message = (
            f"The session pool rejected the request (HTTP 400).{detail} If simple requests fail too, the "
            f"bridge's api-version ({api_version}) may not suit this pool (DSMCP_POOL_API_VERSION)."
        )
    elif status == 401:
        kind = PoolErrorKind.AUTH
        message = (
            f"The session pool refused the bridge's credential (HTTP 401).{detail} The operator should "
            "check DSMCP_POOL_AUTH and the token (DSMCP_POOL_TOKEN) or identity it uses (audience "
            "https://dynamicsessions.io). "
            "A role assignment made in the last few minutes may still be propagating: retry in a few minutes."
        )
    elif status == 403:
        kind = PoolErrorKind.FORBIDDEN
        message = (
            f"The bridge's identity may not use this session pool (HTTP 403).{detail} The operator must "
            'assign the role "Azure ContainerApps Session Executor" on the session pool to that identity '
            "(it can take a few minutes to apply)."
        )
    elif status == 404 and call.file_path is not None:
        return not_found(call.file_path)
    elif status == 404 and call.execution_id is not None:
        return PoolError(
            PoolErrorKind.NOT_FOUND,
            "The session pool does not know this execution: its session was reset or ended, or the pool "
            "no longer keeps its result.",
            status=404,
        )
    elif status == 404:
        kind = PoolErrorKind.CAPACITY
        message = (
            f"The session pool did not accept the session (HTTP 404): it is most likely at its maximum "
            f"number of concurrent sessions.{detail} End unused sessions with end_session, or wait a few "
            "minutes for idle sessions to expire, then retry."
        )
    elif status == 413:
        kind = PoolErrorKind.TOO_LARGE
        message = (
            f"The session pool refused the request as too large (HTTP 413): files are limited to 128 MB."
            f"{detail} Split or compress the data and try again."
        )
    elif status in (429, 503):
        kind = PoolErrorKind.THROTTLED
        wait = retry_after_s(response)
        when = f"in {math.ceil(wait)} s" if wait is not None else "in a few seconds"
        rerun = " The code was not retried automatically." if call.is_execution else ""
        message = f"The session pool is busy (HTTP {status}).{detail} Try again {when}.{rerun}"
    elif status >= 500:
        kind = PoolErrorKind.SERVER
        message = (
            f"The session pool failed (HTTP {status}).{detail} Try again; if it keeps failing the pool "
            "may be unhealthy."
        )
    else:
        kind = PoolErrorKind.BAD_REQUEST
        message = f"The session pool rejected the request (HTTP {status}).{detail}"
    return PoolError(kind, message, status=status)


def transport_error(exc: httpx.RequestError, call: Call) -> PoolError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return PoolError(
            PoolErrorKind.CONNECTION,
            "The bridge could not connect to the session pool (refused or unreachable). The pool may be "
            "down or DSMCP_POOL_ENDPOINT may be wrong; try again shortly.",
        )
    if isinstance(exc, httpx.TimeoutException):
        if call.is_execution:
            waited = call.timeout.read or 0.0
            return PoolError(
                PoolErrorKind.TIMEOUT,
                f"The session pool did not answer within {waited:.0f} s. The code may still be running "
                "and keep the session busy; end_session resets the session (variables and files are lost).",
            )
        return PoolError(PoolErrorKind.TIMEOUT, "The session pool did not answer in time; try again shortly.")
    if not isinstance(exc, httpx.TransportError):  # e.g. an undecodable body
        return PoolError(PoolErrorKind.SERVER, "The session pool's answer could not be read; try again.")
    if call.is_execution:
        return PoolError(
            PoolErrorKind.CONNECTION,
            "The connection to the session pool broke before the result arrived. The code may or may not "
            "have run: check the session's state before running it again.",
        )
    return PoolError(
        PoolErrorKind.CONNECTION,
        "The connection to the session pool broke before its answer was complete; try again.",
    )
