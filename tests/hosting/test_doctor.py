"""`dynamic-sessions-mcp doctor` against a healthy pool (the real CLI) and misconfigured ones."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dynamic_sessions_mcp.config import InboundAuth, Settings
from dynamic_sessions_mcp.doctor import run_doctor
from dynamic_sessions_mcp.server import PoolTarget
from tests.conftest import PoolServer, bridge_settings
from tests.hosting.conftest import API_KEYS
from tests.hosting.test_logs import cli_env
from tests.support.serve import free_port

pytestmark = pytest.mark.anyio


async def doctor(settings: Settings, host: str = "127.0.0.1") -> tuple[bool, str]:
    @asynccontextmanager
    async def target() -> AsyncIterator[PoolTarget]:
        yield PoolTarget.from_settings(settings)

    out = io.StringIO()
    passed = await run_doctor(settings, host, target, out)
    return passed, out.getvalue()


def test_healthy_setup_passes_through_the_cli(python_pool: PoolServer) -> None:
    env = cli_env(python_pool, DSMCP_AUTH="api-key", DSMCP_API_KEYS=API_KEYS)
    env.pop("DSMCP_POOL_TYPE")  # let the doctor detect it from the pool's metadata
    done = subprocess.run(
        [sys.executable, "-m", "dynamic_sessions_mcp", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = done.stderr
    assert "api-key: 2 key(s) named alice, bob" in report
    assert "static bearer token" in report and python_pool.token not in report
    assert "6*7 = 42" in report and "python pool" in report
    assert "all checks passed" in report and "FAIL" not in report


async def test_wrong_pool_token_fails_with_a_fix(python_pool: PoolServer) -> None:
    passed, report = await doctor(bridge_settings(python_pool, pool_token="not-the-pool-token"))
    assert not passed
    assert "FAIL  pool" in report and "HTTP 401" in report
    assert "fix: the pool refused the token: set DSMCP_POOL_TOKEN" in report
    assert "skip  probe execution" in report and "not-the-pool-token" not in report


async def test_closed_port_fails_with_a_fix(python_pool: PoolServer) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    passed, report = await doctor(bridge_settings(python_pool, pool_endpoint=endpoint))
    assert not passed
    assert "could not connect" in report and f"fix: check DSMCP_POOL_ENDPOINT ({endpoint})" in report


async def test_configuration_failures_are_reported_with_fixes(python_pool: PoolServer) -> None:
    passed, report = await doctor(bridge_settings(python_pool), host="0.0.0.0")
    assert not passed and "FAIL  inbound auth" in report and "fix: set DSMCP_AUTH=api-key" in report
    passed, report = await doctor(bridge_settings(python_pool, auth=InboundAuth.ENTRA))
    assert not passed and "DSMCP_ENTRA_AUDIENCE" in report
    passed, report = await doctor(bridge_settings(python_pool, session_secret=None))
    assert passed and "warn  session secret" in report  # a warning, not a failure
    passed, report = await doctor(bridge_settings(python_pool, session_secret="short"))
    assert not passed and "FAIL  session secret" in report
