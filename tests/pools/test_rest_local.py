"""RestPool against the real local pool over loopback HTTP: both contracts, both pool types."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind, PoolType
from dynamic_sessions_mcp.pools.rest import RestPool
from tests.pools.conftest import LocalPoolServer, ServedFaultPool, rest_pool
from tests.support.fault_pool import FaultPool
from tests.support.serve import serve_in_thread

pytestmark = pytest.mark.anyio

LEGACY = "2024-02-02-preview"
CURRENT = "2025-10-02-preview"
BINARY = bytes(range(256)) * 3
ODD_NAME = "odd name #1 & 50% (ü).txt"


def new_identifier() -> str:
    return f"rest-{uuid.uuid4().hex[:16]}"


@pytest.fixture(params=[LEGACY, CURRENT])
def api_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def python(python_pool: LocalPoolServer, http: httpx.AsyncClient, api_version: str) -> RestPool:
    return await rest_pool(python_pool.url, http, api_version=api_version, token=python_pool.token)


@pytest.fixture
async def shell(rest_shell_pool: LocalPoolServer, http: httpx.AsyncClient) -> RestPool:
    return await rest_pool(rest_shell_pool.url, http, pool_type=PoolType.SHELL, token=rest_shell_pool.token)


@pytest.fixture
async def sid(python: RestPool) -> AsyncIterator[str]:
    """A fresh session identifier on the Python pool, ended after the test."""
    identifier = new_identifier()
    yield identifier
    await python.end_session(identifier)


# ---- Python pool ---------------------------------------------------------------------------------


async def test_python_state_result_and_errors(python: RestPool, sid: str) -> None:
    first = await python.run_python(sid, "x = 20\nprint('hello')", 30)
    assert first.succeeded and first.stdout == "hello\n" and first.result is None
    assert first.sandbox_id
    second = await python.run_python(sid, "x * 2 + 2", 30)
    assert second.succeeded and second.result == 42 and second.exit_code is None
    assert second.sandbox_id == first.sandbox_id
    failed = await python.run_python(sid, "1/0", 30)
    assert not failed.succeeded and "ZeroDivisionError" in failed.stderr


async def test_python_image(python: RestPool, sid: str) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    execution = await python.run_python(sid, code, 60)
    assert execution.succeeded, execution.stderr
    assert [image.format for image in execution.images] == ["png"]
    assert execution.images[0].data.startswith(b"\x89PNG")
    assert execution.result is None


async def test_output_is_not_cut_at_4096(python_pool: LocalPoolServer, http: httpx.AsyncClient) -> None:
    pool = await rest_pool(python_pool.url, http, api_version=CURRENT, token=python_pool.token)
    identifier = new_identifier()
    try:
        execution = await pool.run_python(identifier, "print('y' * 10000)", 30)
    finally:
        await pool.end_session(identifier)
    assert execution.stdout == "y" * 10000 + "\n"


async def test_run_shell_on_a_python_pool(python: RestPool, sid: str) -> None:
    before = await python.run_python(sid, "sorted(k for k in globals() if not k.startswith('_'))", 30)
    execution = await python.run_shell(sid, "pwd; echo out; echo err >&2; exit 3", 30)
    assert execution.exit_code == 3 and not execution.succeeded
    assert execution.stdout == "/mnt/data\nout\n"
    assert execution.stderr == "err\n"
    assert execution.result is None
    after = await python.run_python(sid, "sorted(k for k in globals() if not k.startswith('_'))", 30)
    assert after.result == before.result  # nothing leaked into the user's namespace
    quoting = await python.run_shell(sid, "printf '%s|' \"it's\" 'a \"b\"' 'ü 😀' '$HOME'", 30)
    assert quoting.succeeded and quoting.exit_code == 0
    assert quoting.stdout == 'it\'s|a "b"|ü 😀|$HOME|'


async def test_files_round_trip(python: RestPool, sid: str, api_version: str) -> None:
    uploaded = await python.upload(sid, "a.txt", b"alpha\n")
    assert uploaded.path == "a.txt" and uploaded.size == 6
    assert (await python.upload(sid, "sub/deep/b.bin", BINARY)).path == "sub/deep/b.bin"
    await python.upload(sid, ODD_NAME, b"odd")

    assert (await python.download(sid, "a.txt")).data == b"alpha\n"
    assert (await python.download(sid, "sub/deep/b.bin")).data == BINARY
    assert (await python.download(sid, ODD_NAME)).data == b"odd"
    # The sandbox sees the same files.
    seen = await python.run_python(
        sid, "open('/mnt/data/sub/deep/b.bin', 'rb').read() == bytes(range(256)) * 3", 30
    )
    assert seen.result is True

    root = {f.path: f for f in await python.list_files(sid, "", recursive=False)}
    assert root["a.txt"].size == 6 and not root["a.txt"].is_dir
    assert ODD_NAME in root
    if api_version == CURRENT:
        assert root["sub"].is_dir
        everything = {f.path: f for f in await python.list_files(sid, "", recursive=True)}
        assert everything["sub/deep/b.bin"].size == len(BINARY)
        assert everything["sub/deep"].is_dir
        below = await python.list_files(sid, "sub", recursive=False)
        assert [(f.path, f.is_dir) for f in below] == [("sub/deep", True)]
        with pytest.raises(PoolError) as caught:
            await python.list_files(sid, "nope", recursive=False)
        assert caught.value.kind is PoolErrorKind.NOT_FOUND


async def test_recursive_listing_before_2025_10_walks_folders(
    python_pool: LocalPoolServer, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(python_pool.url, http, api_version="2025-02-02-preview", token=python_pool.token)
    identifier = new_identifier()
    try:
        await pool.upload(identifier, "top.txt", b"1")
        await pool.upload(identifier, "a/b/c/deep.txt", b"22")
        found = {f.path: f for f in await pool.list_files(identifier, "", recursive=True)}
        below = {f.path for f in await pool.list_files(identifier, "a", recursive=True)}
    finally:
        await pool.end_session(identifier)
    assert {"top.txt", "a", "a/b", "a/b/c", "a/b/c/deep.txt"} <= set(found)
    assert found["a/b/c/deep.txt"].size == 2 and found["a/b"].is_dir
    assert below == {"a/b", "a/b/c", "a/b/c/deep.txt"}


async def test_missing_files_and_delete(python: RestPool, sid: str) -> None:
    with pytest.raises(PoolError) as caught:
        await python.download(sid, "sub/missing.txt")
    assert caught.value.kind is PoolErrorKind.NOT_FOUND
    assert "/mnt/data/sub/missing.txt" in caught.value.message

    await python.upload(sid, "gone.txt", b"x")
    await python.upload(sid, "dir/inner.txt", b"y")
    await python.delete_file(sid, "gone.txt")
    await python.delete_file(sid, "dir/inner.txt")
    for path in ("gone.txt", "dir/inner.txt"):
        with pytest.raises(PoolError) as caught:
            await python.download(sid, path)
        assert caught.value.kind is PoolErrorKind.NOT_FOUND
    with pytest.raises(PoolError) as caught:
        await python.delete_file(sid, "gone.txt")
    assert caught.value.kind is PoolErrorKind.NOT_FOUND


async def test_end_session_gives_a_fresh_sandbox(python: RestPool) -> None:
    identifier = new_identifier()
    first = await python.run_python(identifier, "kept = 1", 30)
    await python.end_session(identifier)
    await python.end_session(identifier)  # already gone: fine
    try:
        second = await python.run_python(identifier, "'kept' in globals()", 30)
        assert second.result is False
        assert second.sandbox_id and second.sandbox_id != first.sandbox_id
    finally:
        await python.end_session(identifier)


async def test_identifiers_and_names_are_encoded(python: RestPool) -> None:
    identifier = f"rest-{uuid.uuid4().hex[:8]}#a&b%c+d=e?f/g"
    try:
        execution = await python.run_python(identifier, "'same session'", 30)
        assert execution.result == "same session"
        await python.upload(identifier, f"dir #2/{ODD_NAME}", b"encoded")
        assert (await python.download(identifier, f"dir #2/{ODD_NAME}")).data == b"encoded"
        seen = await python.run_python(identifier, f"open({f'/mnt/data/dir #2/{ODD_NAME}'!r}).read()", 30)
        assert seen.result == "encoded"
    finally:
        await python.end_session(identifier)


async def test_describe(python: RestPool, api_version: str) -> None:
    info = await python.describe()
    assert info.pool_type is PoolType.PYTHON and info.api_version == api_version
    if api_version == CURRENT:
        assert "python" in {name.lower() for name in info.runtimes}
        assert info.packages


async def test_pool_type_is_detected(
    python_pool: LocalPoolServer, rest_shell_pool: LocalPoolServer, http: httpx.AsyncClient
) -> None:
    for server, expected in ((python_pool, PoolType.PYTHON), (rest_shell_pool, PoolType.SHELL)):
        pool = await rest_pool(server.url, http, pool_type=None, token=server.token)
        assert pool.pool_type is expected


async def test_a_wrong_token_is_an_auth_error(python_pool: LocalPoolServer, http: httpx.AsyncClient) -> None:
    pool = await rest_pool(python_pool.url, http, token="not-the-token")
    with pytest.raises(PoolError) as caught:
        await pool.run_python(new_identifier(), "1", 30)
    assert caught.value.kind is PoolErrorKind.AUTH


async def test_the_pool_timeout_reports_a_failed_execution(python: RestPool) -> None:
    identifier = new_identifier()
    try:
        execution = await python.run_python(identifier, "import time\ntime.sleep(30)", 1)
    finally:
        await python.end_session(identifier)
    assert not execution.succeeded
    assert "timeout" in execution.stderr


# ---- Shell pool ----------------------------------------------------------------------------------


async def test_shell_pool_commands_and_files(shell: RestPool) -> None:
    identifier = new_identifier()
    try:
        execution = await shell.run_shell(identifier, "echo hi; echo oops >&2; exit 4", 30)
        assert (execution.exit_code, execution.stdout, execution.stderr) == (4, "hi\n", "oops\n")
        assert not execution.succeeded and execution.sandbox_id
        made = await shell.run_shell(identifier, "mkdir -p out && printf data > out/f.txt", 30)
        assert made.succeeded and made.exit_code == 0
        assert (await shell.download(identifier, "out/f.txt")).data == b"data"
        await shell.upload(identifier, "in.txt", b"from the bridge")
        assert (await shell.run_shell(identifier, "cat in.txt", 30)).stdout == "from the bridge"
    finally:
        await shell.end_session(identifier)


async def test_python_on_a_shell_pool(shell: RestPool) -> None:
    identifier = new_identifier()
    try:
        short = await shell.run_python(identifier, "import sys\nprint(6 * 7)\nsys.exit(2)", 30)
        assert (short.stdout, short.exit_code, short.succeeded) == ("42\n", 2, False)
        big_code = "x = 1\n" * 15_000 + "print('big', x)"
        big = await shell.run_python(identifier, big_code, 30)  # > 64 KiB: sent on stdin
        assert big.succeeded and big.stdout.startswith("big 1"), big.stderr
    finally:
        await shell.end_session(identifier)


async def test_python_on_a_2025_02_shell_pool(
    rest_shell_pool: LocalPoolServer, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(
        rest_shell_pool.url,
        http,
        api_version="2025-02-02-preview",
        pool_type=PoolType.SHELL,
        token=rest_shell_pool.token,
    )
    identifier = new_identifier()
    try:
        execution = await pool.run_python(identifier, "print(\"it's\", 'ü')", 30)
    finally:
        await pool.end_session(identifier)
    assert execution.succeeded and execution.stdout == "it's ü\n"


# ---- the fault pool as a proxy in front of the local pool -----------------------------------------


@pytest.fixture(scope="module")
def proxy(python_pool: LocalPoolServer) -> Iterator[ServedFaultPool]:
    fault = FaultPool(python_pool.url)
    with serve_in_thread(fault.app) as url:
        yield ServedFaultPool(fault, url)


async def test_fault_pool_proxies_and_injects(
    proxy: ServedFaultPool, python_pool: LocalPoolServer, http: httpx.AsyncClient
) -> None:
    pool = await rest_pool(proxy.url, http, token=python_pool.token)
    identifier = new_identifier()
    try:
        await pool.upload(identifier, "p/data.bin", BINARY)
        assert (await pool.download(identifier, "p/data.bin")).data == BINARY
        proxy.fault.inject("POST", "executions", drop=True)
        with pytest.raises(PoolError) as caught:
            await pool.run_python(identifier, "1", 30)
        assert caught.value.kind is PoolErrorKind.CONNECTION
        assert (await pool.run_python(identifier, "2 + 2", 30)).result == 4
        assert [r for r in proxy.fault.requests if r[0] == "POST"] == [
            ("POST", "/files"),
            ("POST", "/executions"),
            ("POST", "/executions"),
        ]
    finally:
        await pool.end_session(identifier)
