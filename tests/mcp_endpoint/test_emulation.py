"""The local pool's emulated MCP endpoint, spoken to as raw JSON-RPC over HTTP."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from dynamic_sessions_mcp.local_pool.mcp_emulation import LAUNCH, RUN_PYTHON, RUN_SHELL
from tests.mcp_endpoint.conftest import COOLDOWN_S, MCP_KEY, Endpoints

pytestmark = pytest.mark.anyio


async def rpc(http: httpx.AsyncClient, url: str, method: str, params: dict[str, Any] | None = None) -> Any:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params or {}}
    response = await http.post(url, json=body, headers={"x-ms-apikey": MCP_KEY})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == 7
    return answer


async def call(http: httpx.AsyncClient, url: str, tool: str, **arguments: Any) -> dict[str, Any]:
    answer = await rpc(http, url, "tools/call", {"name": tool, "arguments": arguments})
    result: dict[str, Any] = answer["result"]
    return result


async def launch(http: httpx.AsyncClient, url: str) -> str:
    environment: str = (await call(http, url, LAUNCH))["structuredContent"]["environmentId"]
    return environment


@pytest.mark.parametrize("key", [None, "", "wrong-key", MCP_KEY + "x"])
async def test_a_missing_or_wrong_key_is_refused(
    endpoints: Endpoints, http: httpx.AsyncClient, key: str | None
) -> None:
    headers = {} if key is None else {"x-ms-apikey": key}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = await http.post(endpoints.url(), json=body, headers=headers)
    assert response.status_code == 401 and "x-ms-apikey" in response.text
    bearer = await http.post(endpoints.url(), json=body, headers={"Authorization": f"Bearer {MCP_KEY}"})
    assert bearer.status_code == 401


async def test_handshake_and_tool_list(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    init = (await rpc(http, endpoints.url(), "initialize"))["result"]
    assert init["protocolVersion"] == "2025-03-26" and init["capabilities"]["tools"]
    listed = (await rpc(http, endpoints.url(), "tools/list"))["result"]["tools"]
    assert [t["name"] for t in listed] == [LAUNCH, RUN_PYTHON, RUN_SHELL]
    preview = (await rpc(http, endpoints.url("preview-python"), "tools/list"))["result"]["tools"]
    assert [t["name"] for t in preview] == ["launchPythonEnvironment", RUN_PYTHON]


async def test_protocol_errors(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    headers = {"x-ms-apikey": MCP_KEY}
    notification = await http.post(
        endpoints.url(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    assert notification.status_code == 202
    garbage = await http.post(endpoints.url(), content=b"{not json", headers=headers)
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
    get = await http.get(endpoints.url(), headers=headers)
    assert get.status_code == 405
    assert (await rpc(http, endpoints.url(), "prompts/list"))["error"]["code"] == -32601
    unknown = await rpc(http, endpoints.url(), "tools/call", {"name": "launchShellX", "arguments": {}})
    assert unknown["error"]["code"] == -32602
    environment = await launch(http, endpoints.url())
    both = await rpc(
        http,
        endpoints.url(),
        "tools/call",
        {"name": RUN_SHELL, "arguments": {"environmentId": environment}},
    )
    assert both["error"]["code"] == -32602


async def test_tools_run_in_their_environment(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    url = endpoints.url()
    one, two = await launch(http, url), await launch(http, url)
    assert one != two
    await call(http, url, RUN_PYTHON, environmentId=one, pythonCode="v = 'one'")
    shown = await call(
        http, url, RUN_PYTHON, environmentId=one, pythonCode="print(v); import sys; sys.stderr.write('e')"
    )
    assert shown["structuredContent"] == {"stdout": "one\n", "stderr": "e"}
    assert shown["content"][0]["text"] == "stdout: one\n\n\nstderr: e"
    other = await call(http, url, RUN_PYTHON, environmentId=two, pythonCode="print(v)")
    assert "NameError" in other["structuredContent"]["stderr"]
    await call(http, url, RUN_SHELL, environmentId=one, shellCommand="echo kept > f.txt")
    listed = await call(http, url, RUN_SHELL, environmentId=one, execCommandAndArgs=["cat", "f.txt"])
    assert listed["structuredContent"] == {"stdout": "kept\n", "stderr": ""}
    missing = await call(http, url, RUN_SHELL, environmentId=two, shellCommand="cat f.txt")
    assert "No such file" in missing["structuredContent"]["stderr"]


async def test_an_environment_dies_with_its_session(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    url = endpoints.url()
    environment = await launch(http, url)
    await call(http, url, RUN_SHELL, environmentId=environment, shellCommand="true")
    made_up = await call(http, url, RUN_SHELL, environmentId="no-such-environment", shellCommand="true")
    assert made_up["isError"] is True and "not existing" in made_up["content"][0]["text"]
    await anyio.sleep(COOLDOWN_S + 1.0)  # the pool reaps the idle session
    gone = await call(http, url, RUN_PYTHON, environmentId=environment, pythonCode="1")
    assert gone["isError"] is True and "structuredContent" not in gone
    assert f"Environment ID {environment} not found" in gone["content"][0]["text"]
