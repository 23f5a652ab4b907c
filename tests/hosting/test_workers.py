"""Several worker processes on one port (`--workers`): every worker serves, handles minted by one
are honoured by the others (the parent shares one session secret), and configurations that cannot
work across processes are refused at start with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.bridge.helpers import ok
from tests.conftest import PoolServer
from tests.hosting.test_logs import cli_env, run_cli
from tests.support.serve import free_port, wait_until_serving

pytestmark = pytest.mark.anyio


def worker_cpu_seconds(server_pid: int) -> dict[int, float]:
    """CPU time so far of each uvicorn worker (a spawned child of the server process)."""
    workers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == server_pid and b"multiprocessing.spawn" in cmdline:
            workers[int(proc.name)] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return workers


@pytest.fixture(scope="module")
def two_workers(python_pool: PoolServer) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = cli_env(python_pool, DSMCP_STATELESS_HTTP="true")
    del env["DSMCP_SESSION_SECRET"]  # the parent must make one and share it with its workers
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynamic_sessions_mcp",
            "--transport",
            "http",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url + "/healthz", ready=lambda: len(worker_cpu_seconds(proc.pid)) == 2)
    try:
        yield url + "/mcp", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_both_workers_serve_and_honour_each_others_handles(two_workers: tuple[str, int]) -> None:
    url, pid = two_workers
    async with Client(url, mode="legacy") as client:
        handle = ok(await client.call_tool("new_session", {}))["session"]
        ok(await client.call_tool("run_python", {"code": "counter = 0", "session": handle}))
    before = worker_cpu_seconds(pid)
    results: list[int] = []

    async def one_call() -> None:
        # A fresh client is a fresh connection: the kernel hands it to either worker.
        async with Client(url, mode="legacy") as client:
            data = ok(
                await client.call_tool("run_python", {"code": "counter += 1\ncounter", "session": handle})
            )
            results.append(data["result"])

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(one_call)
    after = worker_cpu_seconds(pid)
    # One sandbox behind the handle whichever worker took the call: 16 increments, each seen once.
    assert sorted(results) == list(range(1, 17))
    assert before.keys() == after.keys() and len(after) == 2
    assert all(after[worker] - before[worker] > 0.05 for worker in after), (before, after)


@pytest.mark.parametrize(
    ("workers", "env", "expected"),
    [
        ("2", {}, ["DSMCP_STATELESS_HTTP=true"]),
        (
            None,
            {"DSMCP_WORKERS": "2", "DSMCP_STATELESS_HTTP": "true", "DSMCP_POOL_ENDPOINT": ""},
            ["DSMCP_POOL_ENDPOINT", "local-pool"],
        ),
        (
            "2",
            {"DSMCP_STATELESS_HTTP": "true", "DSMCP_POOL_AUTH": "api-key", "DSMCP_POOL_API_KEY": "k"},
            ["one worker"],
        ),
        ("0", {}, ["at least 1"]),
    ],
    ids=["not-stateless", "embedded-pool", "api-key-pool", "zero"],
)
def test_configurations_that_cannot_span_workers_are_refused(
    python_pool: PoolServer, workers: str | None, env: dict[str, str], expected: list[str]
) -> None:
    args = ["--transport", "http", "--port", str(free_port()), *(["--workers", workers] if workers else [])]
    done = run_cli(python_pool, *args, **env)
    assert done.returncode != 0
    assert all(text in done.stderr for text in expected), done.stderr
