"""A session pool stand-in that forwards to a real pool and injects faults on request.

Serve `FaultPool(upstream).app` with `serve_in_thread`; tests call `inject`/`clear`/`requests`
from their own thread while the server runs in its own. Without an upstream (`instant` mode) it
answers executions, file lists, session deletes and metadata at once, for throughput benchmarks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}
)
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass
class _Fault:
    method: str | None
    path_contains: str
    status: int | None
    body: dict[str, Any] | None
    headers: dict[str, str] | None
    delay_s: float
    drop: bool
    remaining: int | None  # None = forever

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and self.path_contains in path


class _DroppedResponse(Response):
    """Starts a response that promises more bytes than it sends, then breaks the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status": "Succ', "more_body": True})
        raise ConnectionAbortedError("fault pool: connection dropped on purpose")


class FaultPool:
    """Proxy to `upstream` (a pool base URL) with injectable faults; instant mode when it is None."""

    def __init__(self, upstream: str | None = None, *, instant: bool = False) -> None:
        if upstream is not None and instant:
            raise ValueError("instant mode answers by itself: give no upstream")
        self.upstream = upstream.rstrip("/") if upstream else None
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._requests: list[tuple[str, str]] = []
        self._client: httpx.AsyncClient | None = None
        self.app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=_ALL_METHODS)], lifespan=self._lifespan
        )

    # ---- test API (thread-safe) --------------------------------------------------------------

    def inject(
        self,
        method: str | None,
        path_contains: str,
        *,
        status: int | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0,
        drop: bool = False,
        times: int | None = 1,
    ) -> None:
        """Answer the next `times` matching requests (None = all) with this fault.

        `status`/`body`/`headers` replace the answer; `delay_s` alone delays forwarding; `drop`
        breaks the connection mid-response. Faults are tried in the order they were injected.
        """
        fault = _Fault(method, path_contains, status, body, headers, delay_s, drop, times)
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request seen, e.g. ("POST", "/executions")."""
        with self._lock:
            return list(self._requests)

    # ---- server side ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.upstream is None:
            yield
            return
        timeout = httpx.Timeout(600.0, connect=10.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            self._requests.append((method, path))
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    async def _handle(self, request: Request) -> Response:
        fault = self._take_fault(request.method, request.url.path)
        if fault is not None:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.drop:
                return _DroppedResponse()
            if fault.status is not None or fault.body is not None:
                return _fault_response(fault)
        if self.upstream is None:
            return _instant_answer(request)
        return await self._forward(request)

    async def _forward(self, request: Request) -> Response:
        assert self._client is not None and self.upstream is not None, "no upstream to forward to"
        url = self.upstream + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        upstream_request = self._client.build_request(
            request.method, url, headers=headers, content=request.stream()
        )
        upstream = await self._client.send(upstream_request, stream=True)
        response_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers=response_headers,
            background=BackgroundTask(upstream.aclose),
        )


def _fault_response(fault: _Fault) -> Response:
    status = fault.status or 200
    body = fault.body
    if body is None and status >= 400:
        body = {"error": {"code": "InjectedFault", "message": f"injected HTTP {status}"}}
    if body is None or status == 204:
        return Response(status_code=status, headers=fault.headers)
    return JSONResponse(body, status_code=status, headers=fault.headers)


def _instant_answer(request: Request) -> Response:
    """Canned successful answers, as fast as the server can send them."""
    method, path = request.method, request.url.path.strip("/")
    identifier = request.query_params.get("identifier", "")
    if method == "POST" and path == "executions":
        return JSONResponse(
            {
                "id": "instant",
                "identifier": identifier,
                "status": "Succeeded",
                "result": {
                    "stdout": "",
                    "stderr": "",
                    "executionResult": 42,
                    "executionTimeInMilliseconds": 0,
                },
            }
        )
    if method == "POST" and path == "code/execute":
        return JSONResponse(
            {
                "$id": "1",
                "properties": {
                    "$id": "2",
                    "status": "Success",
                    "stdout": "",
                    "stderr": "",
                    "result": 42,
                    "executionTimeInMilliseconds": 0,
                },
            }
        )
    if method == "GET" and path == "files":
        return JSONResponse({"value": []})
    if method == "DELETE" and path == "session":
        return Response(status_code=204)
    if method == "GET" and path == "metadata":
        return JSONResponse({"poolType": "python", "runtimes": [{"name": "python", "version": "3"}]})
    return JSONResponse(
        {
            "error": {
                "code": "NotImplemented",
                "message": f"instant fault pool does not answer {method} {path}",
            }
        },
        status_code=501,
    )
