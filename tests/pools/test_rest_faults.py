"""RestPool against the fault pool (instant mode, real loopback HTTP): errors, retries, parsing."""

from __future__ import annotations

import base64
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind, PoolType
from dynamic_sessions_mcp.pools.rest import RestPool, connect_rest_pool
from tests.pools.conftest import SECRET_TOKEN, ServedFaultPool, rest_pool
from tests.support.serve import free_port

pytestmark = pytest.mark.anyio

ID = "session-0001"

Op = Callable[[RestPool], Awaitable[object]]


def run(pool: RestPool) -> Awaitable[object]:
    return pool.run_python(ID, "6*7", 5)


def listing(pool: RestPool) -> Awaitable[object]:
    return pool.list_files(ID, "", recursive=False)


def download(pool: RestPool) -> Awaitable[object]:
    return pool.download(ID, "sub/report.csv")


def upload(pool: RestPool) -> Awaitable[object]:
    return pool.upload(ID, "big.bin", b"x" * 1000)


@pytest.mark.parametrize(
    ("method", "path", "op", "status", "kind", "phrases"),
    [
        ("POST", "executions", run, 400, PoolErrorKind.BAD_REQUEST, ["HTTP 400", "injected HTTP 400"]),
        ("POST", "executions", run, 401, PoolErrorKind.AUTH, ["DSMCP_POOL_AUTH", "propagat"]),
        ("GET", "files", listing, 403, PoolErrorKind.FORBIDDEN, ["Azure ContainerApps Session Executor"]),
        ("POST", "executions", run, 404, PoolErrorKind.CAPACITY, ["end_session", "maximum"]),
        (
            "GET",
            "/content",
            download,
            404,
            PoolErrorKind.NOT_FOUND,
            ["no such file: /mnt/data/sub/report.csv"],
        ),
        ("POST", "files", upload, 413, PoolErrorKind.TOO_LARGE, ["128 MB"]),
        ("POST", "executions", run, 429, PoolErrorKind.THROTTLED, ["HTTP 429", "not retried"]),
        ("POST", "executions", run, 500, PoolErrorKind.SERVER, ["HTTP 500"]),
        ("POST", "executions", run, 502, PoolErrorKind.SERVER, ["HTTP 502"]),
    ],
)
async def test_status_maps_to_an_actionable_error(
    instant: ServedFaultPool,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    op: Op,
    status: int,
    kind: PoolErrorKind,
    phrases: list[str],
) -> None:
    pool = await rest_pool(instant.url, http)
    instant.fault.inject(method, path, status=status)
    with pytest.raises(PoolError) as caught:
        await op(pool)
    assert caught.value.kind is kind
    assert caught.value.status == status
    for phrase in phrases:
        assert phrase in caught.value.message


async def test_pool_error_message_is_included_and_truncated(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http)
    long = "the identifier is malformed " + "x" * 1000
    instant.fault.inject("POST", "executions", status=400, body={"error": {"code": "Bad", "message": long}})
    with pytest.raises(PoolError) as caught:
        await pool.run_python(ID, "1", 5)
    assert "the identifier is malformed" in caught.value.message
    assert len(caught.value.message) < 700


async def test_429_with_retry_after_on_a_list_is_retried(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http)
    instant.fault.inject("GET", "files", status=429, headers={"Retry-After": "1"})
    started = time.monotonic()
    assert await pool.list_files(ID, "", recursive=False) == []
    assert time.monotonic() - started >= 0.9
    assert instant.fault.requests == [("GET", "/files"), ("GET", "/files")]


async def test_retry_after_as_http_date_and_503(instant: ServedFaultPool, http: httpx.AsyncClient) -> None:
    pool = await rest_pool(instant.url, http)
    when = email.utils.formatdate(time.time() + 1, usegmt=True)
    instant.fault.inject("DELETE", "session", status=503, headers={"Retry-After": when})
    await pool.end_session(ID)
    assert instant.fault.requests == [("DELETE", "/session"), ("DELETE", "/session")]


async def test_throttling_beyond_the_retry_budget_gives_up(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http, retry_budget_s=1.0)
    instant.fault.inject("GET", "files", status=503, times=None)
    started = time.monotonic()
    with pytest.raises(PoolError) as caught:
        await pool.list_files(ID, "", recursive=False)
    assert caught.value.kind is PoolErrorKind.THROTTLED
    assert time.monotonic() - started < 2.0
    assert len(instant.fault.requests) >= 3  # backoff 0.25 s, 0.5 s, ... within the second


async def test_retry_after_longer_than_the_budget_fails_at_once(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http, retry_budget_s=2.0)
    instant.fault.inject("GET", "files", status=429, headers={"Retry-After": "30"})
    started = time.monotonic()
    with pytest.raises(PoolError) as caught:
        await pool.list_files(ID, "", recursive=False)
    assert time.monotonic() - started < 0.5
    assert "in 30 s" in caught.value.message
    assert instant.fault.requests == [("GET", "/files")]


async def test_an_execution_answered_503_is_not_retried(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http)
    instant.fault.inject("POST", "executions", status=503, headers={"Retry-After": "0"})
    with pytest.raises(PoolError) as caught:
        await pool.run_python(ID, "print(1)", 5)
    assert caught.value.kind is PoolErrorKind.THROTTLED
    assert instant.fault.requests == [("POST", "/executions")]


async def test_an_upload_answered_503_is_not_retried(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http)
    instant.fault.inject("POST", "files", status=503)
    with pytest.raises(PoolError) as caught:
        await pool.upload(ID, "a.txt", b"abc")
    assert caught.value.kind is PoolErrorKind.THROTTLED
    assert instant.fault.requests == [("POST", "/files")]


async def test_a_slow_pool_times_out_quickly(instant: ServedFaultPool, http: httpx.AsyncClient) -> None:
    pool = await rest_pool(instant.url, http, execution_margin_s=0.3)
    instant.fault.inject("POST", "executions", delay_s=2)
    started = time.monotonic()
    with pytest.raises(PoolError) as caught:
        await pool.run_python(ID, "import time; time.sleep(60)", 0.2)
    assert caught.value.kind is PoolErrorKind.TIMEOUT
    assert "end_session" in caught.value.message
    assert time.monotonic() - started < 2.0
    assert instant.fault.requests == [("POST", "/executions")]


async def test_a_dropped_connection_is_a_connection_error(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http)
    instant.fault.inject("POST", "executions", drop=True)
    with pytest.raises(PoolError) as caught:
        await pool.run_python(ID, "1", 5)
    assert caught.value.kind is PoolErrorKind.CONNECTION
    assert "may or may not have run" in caught.value.message
    assert instant.fault.requests == [("POST", "/executions")]
    # The pool keeps working afterwards.
    assert (await pool.run_python(ID, "1", 5)).result == 42


async def test_a_dropped_connection_really_breaks_the_http_response(instant: ServedFaultPool) -> None:
    instant.fault.inject("GET", "files", drop=True)
    async with httpx.AsyncClient() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(f"{instant.url}/files")


@pytest.mark.parametrize("op", [run, listing])
async def test_connection_refused_is_a_connection_error(http: httpx.AsyncClient, op: Op) -> None:
    pool = await rest_pool(f"http://127.0.0.1:{free_port()}", http, retry_budget_s=0.5)
    started = time.monotonic()
    with pytest.raises(PoolError) as caught:
        await op(pool)
    assert caught.value.kind is PoolErrorKind.CONNECTION
    assert "DSMCP_POOL_ENDPOINT" in caught.value.message
    assert time.monotonic() - started < 2.0


async def test_the_token_never_appears_in_errors_or_logs(
    instant: ServedFaultPool, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = await rest_pool(instant.url, http, retry_budget_s=0.5)
    echo = {"error": {"code": "InvalidToken", "message": f"token {SECRET_TOKEN} is not valid for this pool"}}
    instant.fault.inject("POST", "executions", status=401, body=echo)
    instant.fault.inject("GET", "files", status=403, body=echo)
    instant.fault.inject("GET", "content", status=500, body=echo)
    instant.fault.inject("POST", "files", status=400, body=echo)
    instant.fault.inject("DELETE", "session", status=429, body=echo, times=None)
    messages = []
    for op in (run, listing, download, upload, lambda p: p.end_session(ID)):
        with pytest.raises(PoolError) as caught:
            await op(pool)
        messages.append(caught.value.message)
    assert all("is not valid for this pool" in m for m in messages)
    assert all(SECRET_TOKEN not in m for m in messages)
    assert "/files" in caplog.text  # requests were logged ...
    assert SECRET_TOKEN not in caplog.text  # ... without the token


async def test_end_session_on_a_gone_session_is_fine(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(instant.url, http)
    instant.fault.inject("DELETE", "session", status=404)
    await pool.end_session(ID)


# ---- parsing the pool's answers -----------------------------------------------------------------


async def execution_with(
    instant: ServedFaultPool, http: httpx.AsyncClient, body: dict[str, Any], **kw: Any
) -> RestPool:
    """A pool whose next execution is answered with `body` (and a sandbox id header)."""
    pool = await rest_pool(instant.url, http, **kw)
    instant.fault.inject("POST", "execut", status=200, body=body, headers={"X-Ms-Session-Guid": "pod-7"})
    return pool


async def test_current_envelope_with_ids_and_an_image(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    body = {
        "$id": "1",
        "id": "x",
        "identifier": ID,
        "status": "Succeeded",
        "result": {
            "$id": "2",
            "stdout": "hi\n",
            "stderr": "",
            "executionResult": {
                "type": "image",
                "format": "png",
                "base64_data": base64.b64encode(png).decode(),
            },
            "executionTimeInMilliseconds": 12,
        },
    }
    pool = await execution_with(instant, http, body)
    execution = await pool.run_python(ID, "fig", 5)
    assert execution.succeeded
    assert execution.stdout == "hi\n"
    assert execution.result is None
    assert [(i.format, i.data) for i in execution.images] == [("png", png)]
    assert execution.duration_ms == 12
    assert execution.sandbox_id == "pod-7"


async def test_minimal_and_failed_current_answers(instant: ServedFaultPool, http: httpx.AsyncClient) -> None:
    pool = await execution_with(instant, http, {"identifier": ID, "status": "Succeeded"})
    execution = await pool.run_python(ID, "x = 1", 5)
    assert execution.succeeded and execution.stdout == "" and execution.result is None
    failed = {"status": "Failed", "error": {"code": "Timeout", "message": "execution timed out"}}
    instant.fault.inject("POST", "executions", status=200, body=failed)
    execution = await pool.run_python(ID, "while True: pass", 5)
    assert not execution.succeeded
    assert execution.stderr == "execution timed out"


async def test_legacy_envelope(instant: ServedFaultPool, http: httpx.AsyncClient) -> None:
    pool = await rest_pool(instant.url, http, api_version="2024-02-02-preview")
    execution = await pool.run_python(ID, "6*7", 5)
    assert execution.succeeded and execution.result == 42
    assert instant.fault.requests == [("POST", "/code/execute")]
    failure = {"properties": {"status": "Failure", "stderr": "NameError", "executionResult": ""}}
    instant.fault.inject("POST", "code/execute", status=200, body=failure)
    execution = await pool.run_python(ID, "nope", 5)
    assert not execution.succeeded and execution.stderr == "NameError" and execution.result is None


async def test_shell_status_is_the_exit_code(instant: ServedFaultPool, http: httpx.AsyncClient) -> None:
    body = {"id": "x", "identifier": ID, "status": "3", "result": {"stdout": "", "stderr": "boom\n"}}
    pool = await execution_with(instant, http, body, pool_type=PoolType.SHELL)
    execution = await pool.run_shell(ID, "exit 3", 5)
    assert not execution.succeeded and execution.exit_code == 3 and execution.stderr == "boom\n"


# ---- pool type detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, PoolType.PYTHON),  # the instant pool's own answer: {"poolType": "python"}
        ({"poolType": "shell"}, PoolType.SHELL),
        ({"jupyterKernel": {"name": "python3", "version": "3.12"}, "runtimes": []}, PoolType.PYTHON),
        ({"runtimes": [{"name": "Python", "version": "3.12.1"}]}, PoolType.PYTHON),
        ({"runtimes": [{"name": "bash", "version": "5.2"}]}, PoolType.SHELL),
    ],
)
async def test_pool_type_from_metadata(
    instant: ServedFaultPool, http: httpx.AsyncClient, metadata: dict[str, object] | None, expected: PoolType
) -> None:
    if metadata is not None:
        instant.fault.inject("GET", "metadata", status=200, body=metadata)
    pool = await rest_pool(instant.url, http, pool_type=None)
    assert pool.pool_type is expected


@pytest.mark.parametrize(
    ("metadata", "api_version", "pool_type"),
    [
        (
            {"runtimes": [{"name": "node"}], "jupyterKernel": {"name": "IJavascript"}},
            "2025-10-02-preview",
            None,
        ),
        ({}, "2025-10-02-preview", None),
        (None, "2024-10-02-preview", None),  # no metadata before 2025-02-02-preview
        (None, "2024-02-02-preview", PoolType.SHELL),  # Shell pools need the current contract
        (None, "2023-01-01", PoolType.PYTHON),
        (None, "latest", PoolType.PYTHON),
    ],
)
async def test_configurations_that_cannot_work(
    instant: ServedFaultPool,
    http: httpx.AsyncClient,
    metadata: dict[str, object] | None,
    api_version: str,
    pool_type: PoolType | None,
) -> None:
    if metadata is not None:
        instant.fault.inject("GET", "metadata", status=200, body=metadata)
    with pytest.raises(PoolError) as caught:
        await rest_pool(instant.url, http, api_version=api_version, pool_type=pool_type)
    assert caught.value.kind is PoolErrorKind.CONFIG


async def test_endpoint_with_a_path_and_trailing_slash_is_appended_to(
    instant: ServedFaultPool, http: httpx.AsyncClient
) -> None:
    pool = await connect_rest_pool(
        endpoint=f"{instant.url}/subscriptions/s/sessionPools/p/",
        api_version="2025-10-02-preview",
        pool_type=PoolType.PYTHON,
        http=http,
        auth=None,
    )
    with pytest.raises(PoolError):  # the instant pool does not know this path: 501
        await pool.run_python(ID, "1", 5)
    assert instant.fault.requests == [("POST", "/subscriptions/s/sessionPools/p/executions")]
