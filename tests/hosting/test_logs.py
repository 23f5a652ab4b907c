"""The real CLI serving HTTP: JSON logs with request ids, and not one configured secret in them
(even at DEBUG); code bodies stay out of INFO. Start-up refuses unsafe or unusable auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import httpx2
import pytest

from tests.bridge.helpers import ok
from tests.conftest import SESSION_SECRET, PoolServer
from tests.hosting.conftest import ALICE_KEY, API_KEYS, BOB_KEY, INIT, MCP_HEADERS, mcp_client
from tests.support.serve import free_port, wait_until_serving

pytestmark = pytest.mark.anyio
CODE_MARKER = "code_marker_5e1f"


def cli_env(pool: PoolServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSMCP_")}
    return {
        **env,
        "DSMCP_POOL_ENDPOINT": pool.url,
        "DSMCP_POOL_AUTH": "token",
        "DSMCP_POOL_TOKEN": pool.token,
        "DSMCP_POOL_TYPE": "python",
        "DSMCP_SESSION_SECRET": SESSION_SECRET,
        **extra,
    }


@pytest.fixture(scope="module")
def logged_server(python_pool: PoolServer) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = cli_env(
        python_pool,
        DSMCP_AUTH="api-key",
        DSMCP_API_KEYS=API_KEYS,
        DSMCP_LOG_LEVEL="DEBUG",
        DSMCP_LOG_FORMAT="json",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamic_sessions_mcp", "--transport", "http", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url + "/healthz", logs=lambda: proc.communicate()[1])
    try:
        yield url + "/mcp", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


async def test_logs_carry_request_ids_and_no_secret(
    logged_server: tuple[str, subprocess.Popen[str]], python_pool: PoolServer
) -> None:
    url, proc = logged_server
    tool_calls: set[str] = set()

    async def tag(request: httpx2.Request) -> None:
        """Give every request its own X-Request-Id; remember those of tool calls."""
        rid = f"test-{len(tool_calls)}-{time.monotonic_ns()}"
        request.headers["x-request-id"] = rid
        if b'"tools/call"' in request.content:
            tool_calls.add(rid)

    for era in ("auto", "legacy"):
        async with mcp_client(url, {"Authorization": f"Bearer {ALICE_KEY}"}, era, tag) as alice:
            handle = ok(await alice.call_tool("run_python", {"code": f"{CODE_MARKER} = 1\nprint('x')"}))[
                "session"
            ]
            ok(await alice.call_tool("upload_file", {"path": "a.txt", "content": "a", "session": handle}))
        async with mcp_client(url, {"X-API-Key": BOB_KEY}, era) as bob:
            ok(await bob.call_tool("list_files", {}))
    httpx.post(url, json=INIT, headers={**MCP_HEADERS, "X-API-Key": "wrong-key-that-is-long-enough"})
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert len(lines) > 10, stderr
    for secret in (ALICE_KEY, BOB_KEY, python_pool.token, SESSION_SECRET, "wrong-key-that-is-long-enough"):
        assert secret not in stderr, f"a configured secret reached the logs: {secret[:6]}…"
    informative = [line for line in lines if line["level"] != "DEBUG"]
    assert not [line for line in informative if CODE_MARKER in line["message"]]
    assert any("refused POST /mcp: unknown_key" in line["message"] for line in informative)
    # Pool requests made for a tool call are logged under the id of that call's HTTP request.
    executions = [line for line in lines if line["message"].startswith("POST executions")]
    assert len(executions) == 2 and {line["request_id"] for line in executions} <= tool_calls


def run_cli(pool: PoolServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamic_sessions_mcp", *args],
        env=cli_env(pool, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_auth_off_loopback_is_refused_at_start(python_pool: PoolServer) -> None:
    done = run_cli(python_pool, "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode != 0
    assert "without inbound authentication" in done.stderr and "DSMCP_AUTH=api-key" in done.stderr


def test_unusable_auth_settings_are_refused_at_start(python_pool: PoolServer) -> None:
    done = run_cli(python_pool, "--transport", "http", "--port", str(free_port()), DSMCP_AUTH="entra")
    assert done.returncode != 0 and "DSMCP_ENTRA_AUDIENCE" in done.stderr
