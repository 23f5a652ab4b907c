"""`running()`: the pool embedded in the caller's event loop (how the bridge's CLI starts it)."""

from __future__ import annotations

import asyncio
import logging
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType
from dynamic_sessions_mcp.local_pool.runner import running
from dynamic_sessions_mcp.local_pool.sandbox import SandboxUnavailable
from tests.local_pool.conftest import LATEST, TOKEN
from tests.local_pool.test_api_lifecycle import processes_in_cgroup, running_pid
from tests.support.serve import free_port


def test_running_serves_in_the_callers_loop_without_keepalive_stalls() -> None:
    async def scenario() -> tuple[str, list[float], int]:
        config = LocalPoolConfig(pool_type=LocalPoolType.SHELL, token=TOKEN)
        async with running(config) as url:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=url, headers=headers) as client:
                params = {"api-version": LATEST, "identifier": "embedded-1"}
                r = await client.post("executions", params=params, json={"shellCommand": "echo hi"})
                assert r.json()["result"]["stdout"] == "hi\n"
                # Same loop, one keep-alive connection: each round trip must not wait for a
                # delayed ACK (~40 ms when the listening socket lacks TCP_NODELAY).
                times = []
                for _ in range(10):
                    started = time.perf_counter()
                    (await client.get("session", params=params)).raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)
        async with httpx.AsyncClient() as client:
            try:
                await client.get(f"{url}/metadata", params={"api-version": LATEST})
                after = 200
            except httpx.ConnectError:
                after = 0
        return url, times, after

    url, times, after = asyncio.run(scenario())
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    assert statistics.median(times) < 30, times
    assert after == 0  # stopped with the context


def test_pool_refuses_to_start_without_a_working_sandbox(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found

    async def scenario() -> None:
        async with running(LocalPoolConfig(pool_type=LocalPoolType.SHELL, data_dir=tmp_path / "data")):
            raise AssertionError("the pool started without a sandbox")

    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        asyncio.run(scenario())
    assert list((tmp_path / "data").iterdir()) == []  # nothing left behind


def test_unsafe_mode_warns_loudly_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> dict[str, object]:
        config = LocalPoolConfig(pool_type=LocalPoolType.SHELL, unsafe_no_sandbox=True)
        async with running(config) as url, httpx.AsyncClient(base_url=url) as client:
            headers = {"Authorization": "Bearer anything"}
            params = {"api-version": LATEST, "identifier": "unsafe-1"}
            ran = await client.post(
                "executions", params=params, headers=headers, json={"shellCommand": "pwd"}
            )
            meta = await client.get("metadata", params={"api-version": LATEST}, headers=headers)
            return {"pwd": ran.json()["result"]["stdout"], **meta.json()}

    with caplog.at_level(logging.WARNING):
        result = asyncio.run(scenario())
    assert result["isolation"] == "none"
    assert any("WITHOUT A SANDBOX" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_shutdown_kills_every_sandbox(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, list[int]]:
        config = LocalPoolConfig(token=TOKEN, warm_sessions=1, data_dir=tmp_path)
        async with running(config) as url:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=url, headers=headers) as client:
                params = {"api-version": LATEST, "identifier": "shutdown-1"}
                r = await client.post("executions", params=params, json={"code": "1"})
                etag = r.headers["X-Ms-Session-Guid"]
                pids = processes_in_cgroup(etag)
        return etag, pids

    etag, pids = asyncio.run(scenario())
    assert pids  # the check below means something: the kernel ran in its cgroup
    assert not any(running_pid(pid) for pid in pids)
    assert not processes_in_cgroup(etag)
    assert list(tmp_path.glob("pool-*")) == []  # session directories removed


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType\n"
        "from dynamic_sessions_mcp.local_pool.runner import serve\n"
        "config = LocalPoolConfig(pool_type=LocalPoolType.SHELL, data_dir=Path(sys.argv[2]))\n"
        "asyncio.run(serve(config, '127.0.0.1', int(sys.argv[1])))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(port), str(tmp_path)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/metadata",
                    params={"api-version": LATEST},
                    headers={"Authorization": "Bearer x"},
                )
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert list(tmp_path.glob("pool-*")) == []
    finally:
        proc.kill()
        proc.wait()
