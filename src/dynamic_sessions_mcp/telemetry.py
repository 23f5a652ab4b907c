"""Prometheus metrics and OpenTelemetry spans, attached from outside the tools' logic.

Tool calls are observed by an MCP server middleware (the SDK already opens an OpenTelemetry span
per tool call); pool requests by a wrapper around the pool client's HTTP transport, which also
opens a client span under the tool call's span. Spans are no-ops unless an OpenTelemetry SDK is
configured. Each app gets its own registry, so several servers can live in one process.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.types import CallToolResult
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Azure's default session cooldown: a sandbox untouched for longer is presumed reaped.
ACTIVE_WINDOW_S = 300.0
_TOOL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 220, float("inf"))
_POOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 220, float("inf"))
_OPERATIONS = {
    "executions": "execute",
    "code": "execute",
    "files": "files",
    "session": "session",
    "sessions": "session",
    "metadata": "metadata",
}
_tracer = trace.get_tracer("dynamic_sessions_mcp")


class _RecentSandboxes:
    """Pool identifiers used within the window; deleted sessions leave at once."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._seen: dict[str, float] = {}

    def touch(self, identifier: str) -> None:
        self._seen[identifier] = time.monotonic()

    def forget(self, identifier: str) -> None:
        self._seen.pop(identifier, None)

    def count(self) -> float:
        horizon = time.monotonic() - self._window_s
        self._seen = {k: t for k, t in self._seen.items() if t >= horizon}
        return float(len(self._seen))


class Metrics:
    """The bridge's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tool_calls = Counter(
            "dsmcp_tool_calls",
            "Tool calls by outcome (ok, tool_error, protocol_error, cancelled).",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "dsmcp_tool_call_duration_seconds",
            "Tool call latency.",
            ["tool"],
            buckets=_TOOL_BUCKETS,
            registry=r,
        )
        self.tool_in_flight = Gauge(
            "dsmcp_tool_calls_in_flight", "Tool calls running now.", ["tool"], registry=r
        )
        self.pool_requests = Counter(
            "dsmcp_pool_requests",
            "Requests to the session pool by HTTP status ('error': no answer).",
            ["operation", "status"],
            registry=r,
        )
        self.pool_duration = Histogram(
            "dsmcp_pool_request_duration_seconds",
            "Session pool request latency.",
            ["operation"],
            buckets=_POOL_BUCKETS,
            registry=r,
        )
        self.sandboxes = _RecentSandboxes(ACTIVE_WINDOW_S)
        active = Gauge(
            "dsmcp_active_sandboxes",
            f"Pool sessions this replica used in the last {ACTIVE_WINDOW_S:.0f} s and did not end.",
            registry=r,
        )
        active.set_function(self.sandboxes.count)
        self.auth_refusals = Counter(
            "dsmcp_auth_refusals",
            "Requests to /mcp refused by inbound auth, by reason.",
            ["reason"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _is_tool_error(result: HandlerResult) -> bool:
    if isinstance(result, CallToolResult):
        return result.is_error is True
    return isinstance(result, dict) and result.get("isError") is True


class ToolCallMetrics:
    """MCP server middleware: count and time every tools/call; unknown names share one label."""

    def __init__(self, metrics: Metrics, tool_names: set[str]) -> None:
        self._metrics = metrics
        self._tools = tool_names

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        name = ctx.params.get("name") if ctx.params else None
        tool = name if isinstance(name, str) and name in self._tools else "unknown"
        in_flight = self._metrics.tool_in_flight.labels(tool)
        in_flight.inc()
        started = time.perf_counter()
        outcome = "cancelled"
        try:
            result = await call_next(ctx)
            outcome = "tool_error" if _is_tool_error(result) else "ok"
            return result
        except Exception:
            outcome = "protocol_error"
            raise
        finally:
            in_flight.dec()
            self._metrics.tool_duration.labels(tool).observe(time.perf_counter() - started)
            self._metrics.tool_calls.labels(tool, outcome).inc()


class InstrumentedTransport(httpx.AsyncBaseTransport):
    """Wraps the pool client's transport: a span, a status count and a latency per request."""

    def __init__(self, inner: httpx.AsyncBaseTransport, endpoint: str, metrics: Metrics) -> None:
        self._inner = inner
        self._base_path = urlsplit(endpoint).path.rstrip("/")
        self._metrics = metrics

    def _operation(self, url: httpx.URL) -> str:
        path = url.path
        relative = path[len(self._base_path) :] if path.startswith(self._base_path) else path
        first = relative.strip("/").split("/", 1)[0]
        return _OPERATIONS.get(first, "other")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        operation = self._operation(request.url)
        started = time.perf_counter()
        with _tracer.start_as_current_span(
            f"pool {operation}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "server.address": request.url.host,
                "dsmcp.pool.operation": operation,
            },
        ) as span:
            try:
                response = await self._inner.handle_async_request(request)
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(StatusCode.ERROR)
                self._record(operation, "error", started)
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(StatusCode.ERROR)
        self._record(operation, str(response.status_code), started)
        self._track_sandbox(request, operation, response.status_code)
        return response

    def _record(self, operation: str, status: str, started: float) -> None:
        self._metrics.pool_duration.labels(operation).observe(time.perf_counter() - started)
        self._metrics.pool_requests.labels(operation, status).inc()

    def _track_sandbox(self, request: httpx.Request, operation: str, status: int) -> None:
        identifier = parse_qs(request.url.query.decode()).get("identifier", [""])[0]
        if not identifier:
            return
        if operation == "session" and request.method == "DELETE":
            self._metrics.sandboxes.forget(identifier)
        elif status < 400:
            self._metrics.sandboxes.touch(identifier)

    async def aclose(self) -> None:
        await self._inner.aclose()
