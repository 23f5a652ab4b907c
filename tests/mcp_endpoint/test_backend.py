"""McpEndpointPool over real HTTP against the emulated endpoints (conftest), and its pure parts."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from dynamic_sessions_mcp.local_pool.mcp_emulation import RUN_SHELL
from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind, PoolType
from dynamic_sessions_mcp.pools.mcp_endpoint import (
    RUN_PYTHON_TOOL,
    RUN_SHELL_TOOL,
    McpEndpointPool,
    ToolNames,
    choose_tools,
    is_expired_message,
)
from dynamic_sessions_mcp.pools.mcp_rpc import RpcClient
from tests.mcp_endpoint.conftest import CUT_AT, MCP_KEY, Endpoints, connect

pytestmark = pytest.mark.anyio


def new_identifier() -> str:
    return f"dsmcp-test-{uuid.uuid4().hex[:16]}"


def test_tool_names_of_every_preview_are_accepted() -> None:
    assert choose_tools(["launchShell", RUN_PYTHON_TOOL, RUN_SHELL_TOOL], "u") == ToolNames(
        "launchShell", RUN_PYTHON_TOOL, RUN_SHELL_TOOL
    )
    assert choose_tools(["launchPythonEnvironment", RUN_PYTHON_TOOL], "u") == ToolNames(
        "launchPythonEnvironment", RUN_PYTHON_TOOL, None
    )
    assert choose_tools(["launchShellEnvironment", RUN_SHELL_TOOL], "u") == ToolNames(
        "launchShellEnvironment", None, RUN_SHELL_TOOL
    )
    with pytest.raises(PoolError) as raised:
        choose_tools(["launchShell"], "https://pool.example/mcp")
    assert raised.value.kind is PoolErrorKind.CONFIG and "['launchShell']" in raised.value.message


@pytest.mark.parametrize(
    ("text", "expired"),
    [
        ("Environment ID 1f0c not found", True),
        ("The environment/session is not existing", True),
        ("environment 'abc' does not exist", True),
        ("Session has expired; launch a new environment", True),
        ("the session pool is at capacity (20 live sessions)", False),
        ("invalid params: 'pythonCode' must be a string", False),
    ],
)
def test_expiry_is_recognised_in_the_endpoints_wordings(text: str, expired: bool) -> None:
    assert is_expired_message(text) is expired


async def test_a_stranger_mcp_server_is_a_configuration_error(
    endpoints: Endpoints, http: httpx.AsyncClient
) -> None:
    with pytest.raises(PoolError) as raised:
        await connect(http, endpoints.url("other"))
    message = raised.value.message
    assert raised.value.kind is PoolErrorKind.CONFIG
    assert "['fetch', 'search']" in message and "launchShell" in message and "DSMCP_POOL_ENDPOINT" in message


async def test_a_wrong_key_names_the_settings_to_fix(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    with pytest.raises(PoolError) as raised:
        await connect(http, endpoints.url(), key="not-" + MCP_KEY)
    message = raised.value.message
    assert raised.value.kind is PoolErrorKind.AUTH and raised.value.status == 401
    assert (
        "DSMCP_POOL_API_KEY" in message
        and "DSMCP_POOL_ENDPOINT" in message
        and "mcpServerEndpoint" in message
    )
    assert MCP_KEY not in message


async def test_a_url_without_an_endpoint_is_a_configuration_error(
    endpoints: Endpoints, http: httpx.AsyncClient
) -> None:
    with pytest.raises(PoolError) as raised:
        await connect(http, endpoints.url("nowhere"))
    assert raised.value.kind is PoolErrorKind.CONFIG and "mcpServerEndpoint" in raised.value.message


async def test_the_pool_type_is_detected(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    assert (await connect(http, endpoints.url(), pool_type=None)).pool_type is PoolType.PYTHON
    assert (await connect(http, endpoints.url("preview-shell"), pool_type=None)).pool_type is PoolType.SHELL


async def test_executions_report_status_value_images_and_limits(
    endpoints: Endpoints, http: httpx.AsyncClient
) -> None:
    pool = await connect(http, endpoints.url())
    me = new_identifier()
    first = await pool.run_python(me, "import sys\nx = 41\nprint('no newline', end='')\nx + 1", 30)
    assert (first.succeeded, first.stdout, first.result, first.exit_code) == (True, "no newline", 42, None)
    assert first.sandbox_id
    assert (await pool.run_python(me, "x", 30)).result == 41
    assert (await pool.run_python(me, "{'a': [1, None]}", 30)).result == {"a": [1, None]}
    assert (await pool.run_python(me, "object", 30)).result == "<class 'object'>"
    assert (await pool.run_python(me, "x = 1", 30)).result is None
    failed = await pool.run_python(me, "def f():\n    raise ValueError('boom')\nf()", 30)
    assert not failed.succeeded and "ValueError: boom" in failed.stderr and "line 2, in f" in failed.stderr
    assert "<dsmcp>" not in failed.stderr and "__dsmcp" not in failed.stderr
    syntax = await pool.run_python(me, "1 +", 30)
    assert not syntax.succeeded and "SyntaxError" in syntax.stderr
    leftovers = await pool.run_python(me, "sorted(k for k in globals() if 'dsmcp' in k)", 30)
    assert leftovers.result == []
    plotted = await pool.run_python(
        me,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nplt.figure(); plt.plot([2, 1])",
        30,
    )
    assert [i.format for i in plotted.images] == ["png", "png"]
    assert all(i.data.startswith(b"\x89PNG") for i in plotted.images)
    slow = await pool.run_python(me, "import time\ntime.sleep(10)", 1)
    assert not slow.succeeded and "TimeoutError" in slow.stderr
    shell = await pool.run_shell(me, "echo out; echo err >&2; exit 3", 30)
    assert (shell.succeeded, shell.exit_code, shell.stdout, shell.stderr) == (False, 3, "out\n", "err\n")
    stopped = await pool.run_shell(me, "sleep 10", 1)
    assert stopped.exit_code == 124 and "time limit of 1 s" in stopped.stderr


async def test_files_round_trip_and_are_listed(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    pool = await connect(http, endpoints.url())
    me = new_identifier()
    data = os.urandom(300_000)  # several upload chunks
    name = "sub dir/odd 'name' #1.bin"
    assert (await pool.upload(me, name, data)).size == len(data)
    assert (await pool.download(me, name)).data == data
    await pool.upload(me, "-dash.txt", b"")
    assert (await pool.download(me, "-dash.txt")).data == b""
    top = {f.path: f for f in await pool.list_files(me, "", recursive=False)}
    assert set(top) == {"sub dir", "-dash.txt"} and top["sub dir"].is_dir
    everything = {f.path: f for f in await pool.list_files(me, "", recursive=True)}
    assert everything[name].size == len(data) and everything[name].modified
    assert [f.path for f in await pool.list_files(me, "sub dir", recursive=False)] == [name]
    await pool.delete_file(me, name)
    for missing in (pool.download(me, name), pool.delete_file(me, name), pool.list_files(me, "nope", False)):
        with pytest.raises(PoolError) as raised:
            await missing
        assert raised.value.kind is PoolErrorKind.NOT_FOUND
    with pytest.raises(PoolError) as raised:
        await pool.download(me, "sub dir")
    assert raised.value.kind is PoolErrorKind.BAD_REQUEST


async def test_end_session_wipes_the_files_and_starts_afresh(
    endpoints: Endpoints, http: httpx.AsyncClient
) -> None:
    pool = await connect(http, endpoints.url())
    me = new_identifier()
    await pool.upload(me, "a/b.txt", b"private")
    old = (await pool.run_python(me, "kept = 1", 30)).sandbox_id  # the environmentId
    assert old is not None
    await pool.end_session(me)
    fresh = await pool.run_python(me, "kept", 30)
    assert "NameError" in fresh.stderr and fresh.sandbox_id != old
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": RUN_SHELL, "arguments": {"environmentId": old, "shellCommand": "ls -A | wc -l"}},
    }
    answer = await http.post(endpoints.url(), json=body, headers={"x-ms-apikey": MCP_KEY})
    assert answer.json()["result"]["structuredContent"]["stdout"] == "0\n"  # the old environment is empty


@pytest.mark.parametrize("variant", ["preview-python", "preview-shell"])
async def test_one_run_tool_stands_in_for_the_other(
    endpoints: Endpoints, http: httpx.AsyncClient, variant: str
) -> None:
    pool = await connect(http, endpoints.url(variant), pool_type=None)
    me = new_identifier()
    shell = await pool.run_shell(me, "echo hi; exit 3", 30)
    assert (shell.exit_code, shell.stdout) == (3, "hi\n")
    python = await pool.run_python(me, "print('p')\n6 * 7", 30)
    assert (python.stdout, python.result) == ("p\n", 42)
    data = os.urandom(200_000)
    await pool.upload(me, "x.bin", data)
    assert (await pool.download(me, "x.bin")).data == data
    assert [f.path for f in await pool.list_files(me, "", False)] == ["x.bin"]


async def test_an_endpoint_with_tight_limits(endpoints: Endpoints, http: httpx.AsyncClient) -> None:
    """Uploads shrink their calls until the endpoint takes them, downloads their chunks until
    they come back whole; a run whose report was cut says so."""
    pool = await connect(http, endpoints.url("tight"))
    me = new_identifier()
    data = os.urandom(1_000_000)
    await pool.upload(me, "big.bin", data)
    assert (await pool.download(me, "big.bin")).data == data
    flood = await pool.run_python(me, f"print('x' * {CUT_AT * 2})", 30)
    assert not flood.succeeded and "without its status report" in flood.stderr


async def test_a_session_unknown_to_end_session_still_checks_the_endpoint(
    endpoints: Endpoints, http: httpx.AsyncClient
) -> None:
    """Readiness probes end a made-up session: that must still reach the endpoint with the key."""
    pool = await connect(http, endpoints.url())
    await pool.end_session(new_identifier())
    tools = ToolNames("launchShell", RUN_PYTHON_TOOL, RUN_SHELL_TOOL)
    revoked = RpcClient(endpoint=endpoints.url(), api_key="revoked", http=http, retry_budget_s=0)
    with pytest.raises(PoolError) as raised:
        await McpEndpointPool(rpc=revoked, tools=tools, pool_type=PoolType.PYTHON).end_session(
            new_identifier()
        )
    assert raised.value.kind is PoolErrorKind.AUTH
