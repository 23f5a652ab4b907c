"""Operations endpoints outside auth (/healthz, /readyz, /metrics), request ids, allowed hosts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynamic_sessions_mcp.config import InboundAuth
from dynamic_sessions_mcp.http_app import _transport_security
from tests.bridge.helpers import error, ok
from tests.conftest import PoolServer, bridge_settings, serve_bridge
from tests.hosting.conftest import ALICE_KEY, API_KEYS, INIT, MCP_HEADERS, mcp_client
from tests.support.serve import free_port

pytestmark = pytest.mark.anyio
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def origin(url: str) -> str:
    return url.removesuffix("/mcp")


def scrape(url: str) -> Samples:
    response = httpx.get(origin(url) + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_health_and_readiness_need_no_credential(api_key_bridge: str) -> None:
    assert httpx.get(origin(api_key_bridge) + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(origin(api_key_bridge) + "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


@contextmanager
def broken_bridge(python_pool: PoolServer, **overrides: object) -> Iterator[str]:
    settings = bridge_settings(python_pool, auth=InboundAuth.API_KEY, api_keys=API_KEYS, **overrides)
    yield from serve_bridge(settings)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"pool_token": "not-the-pool-token"}, "auth"),
        ({"pool_endpoint": f"http://127.0.0.1:{free_port()}", "pool_retry_budget_s": 0.0}, "connection"),
    ],
)
def test_not_ready_when_the_pool_refuses_or_is_down(
    python_pool: PoolServer, overrides: dict[str, object], reason: str
) -> None:
    with broken_bridge(python_pool, **overrides) as url:
        assert httpx.get(origin(url) + "/healthz").status_code == 200  # alive all the same
        ready = httpx.get(origin(url) + "/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "unavailable", "reason": reason})


async def test_metrics_count_calls_errors_latency_sandboxes_and_pool_statuses(api_key_bridge: str) -> None:
    before = scrape(api_key_bridge)
    async with mcp_client(api_key_bridge, {"X-API-Key": ALICE_KEY}) as client:
        handle = ok(await client.call_tool("run_python", {"code": "1 + 1"}))["session"]
        ok(await client.call_tool("list_files", {"session": handle}))
        error(await client.call_tool("download_file", {"path": "nope.txt", "session": handle}))
    assert httpx.post(api_key_bridge, json=INIT, headers=MCP_HEADERS).status_code == 401
    after = scrape(api_key_bridge)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dsmcp_tool_calls_total", tool="run_python", outcome="ok") == 1
    assert delta("dsmcp_tool_calls_total", tool="list_files", outcome="ok") == 1
    assert delta("dsmcp_tool_calls_total", tool="download_file", outcome="tool_error") == 1
    assert delta("dsmcp_tool_call_duration_seconds_count", tool="run_python") == 1
    assert delta("dsmcp_tool_call_duration_seconds_bucket", tool="run_python", le="+Inf") == 1
    assert value(after, "dsmcp_tool_calls_in_flight", tool="run_python") == 0
    assert delta("dsmcp_pool_requests_total", operation="execute", status="200") == 1
    assert delta("dsmcp_pool_requests_total", operation="files", status="404") >= 1
    assert delta("dsmcp_pool_request_duration_seconds_count", operation="execute") == 1
    assert value(after, "dsmcp_active_sandboxes") >= 1
    assert delta("dsmcp_auth_refusals_total", reason="missing") == 1


def test_every_response_names_its_request_id(api_key_bridge: str) -> None:
    generated = httpx.get(origin(api_key_bridge) + "/healthz").headers["x-request-id"]
    assert len(generated) == 16
    echoed = httpx.post(api_key_bridge, json=INIT, headers={**MCP_HEADERS, "x-request-id": "trace-abc.1"})
    assert echoed.headers["x-request-id"] == "trace-abc.1"
    odd = httpx.get(origin(api_key_bridge) + "/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert odd.headers["x-request-id"] != "bad id\twith spaces"


def test_no_standalone_stream_is_offered_to_2025_sessions(api_key_bridge: str) -> None:
    """The server sends nothing outside requests, so it holds no idle GET stream per client."""
    headers = {**MCP_HEADERS, "X-API-Key": ALICE_KEY}
    opened = httpx.post(api_key_bridge, json=INIT, headers=headers)
    session = opened.headers["mcp-session-id"]
    stream = httpx.get(
        api_key_bridge, headers={**headers, "accept": "text/event-stream", "mcp-session-id": session}
    )
    assert stream.status_code == 405 and stream.headers["allow"] == "POST, DELETE"


def test_dns_rebinding_protection_stays_on(api_key_bridge: str) -> None:
    headers = {**MCP_HEADERS, "X-API-Key": ALICE_KEY, "host": "evil.example"}
    assert httpx.post(api_key_bridge, json=INIT, headers=headers).status_code == 421


def test_public_url_and_allowed_hosts_are_accepted_hosts(python_pool: PoolServer) -> None:
    settings = bridge_settings(
        python_pool, public_url="https://mcp.example.com", allowed_hosts=["bridge.internal"]
    )
    allowed = _transport_security(settings).allowed_hosts
    assert {"mcp.example.com", "mcp.example.com:*", "bridge.internal", "bridge.internal:*"} <= set(allowed)
    assert _transport_security(settings).enable_dns_rebinding_protection
