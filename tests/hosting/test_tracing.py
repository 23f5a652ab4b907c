"""OpenTelemetry: with an SDK configured, a tool call's span has the pool request's span as child."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from mcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from dynamic_sessions_mcp.telemetry import InstrumentedTransport, Metrics
from tests.bridge.helpers import ok
from tests.conftest import PoolServer, bridge_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process-wide tracer provider (settable once), recording into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    exporter.clear()


async def test_pool_requests_are_child_spans_of_the_tool_call(
    python_pool: PoolServer, spans: InMemorySpanExporter
) -> None:
    settings = bridge_settings(python_pool)
    metrics = Metrics()
    target = PoolTarget.from_settings(settings)

    def wrap(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return InstrumentedTransport(inner, target.endpoint, metrics)

    async with open_bridge(settings, target, wrap_transport=wrap) as mcp, Client(mcp) as client:
        spans.clear()
        ok(await client.call_tool("run_python", {"code": "6 * 7"}))
    finished = spans.get_finished_spans()
    (tool,) = [s for s in finished if s.name == "tools/call run_python"]
    (pool,) = [s for s in finished if s.name == "pool execute"]
    assert tool.kind is SpanKind.SERVER and pool.kind is SpanKind.CLIENT
    assert pool.parent is not None and pool.parent.span_id == tool.context.span_id
    assert pool.context.trace_id == tool.context.trace_id
    assert pool.attributes is not None and pool.attributes["http.response.status_code"] == 200
