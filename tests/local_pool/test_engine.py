"""Engine tests against real bubblewrap sandboxes: kernel semantics, limits, escape probes, shell."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dynamic_sessions_mcp.local_pool.python_kernel import KernelOutcome, PythonKernel
from dynamic_sessions_mcp.local_pool.sandbox import Limits, Sandbox, SandboxUnavailable
from dynamic_sessions_mcp.local_pool.shell import run_shell

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

T = TypeVar("T")


class Loop:
    """One event loop for the whole module, so a kernel started once can serve every test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.loop.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    sb = Sandbox(Limits(), mpl_cache_dir=tmp_path_factory.mktemp("mplcache"))
    sb.self_test()
    return sb


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="module")
def kernel(loop: Loop, sandbox: Sandbox, session_dir: Path) -> Iterator[PythonKernel]:
    k = loop.run(PythonKernel.start(sandbox, session_dir))
    yield k
    loop.run(k.shutdown())


def run(loop: Loop, kernel: PythonKernel, code: str, timeout_s: float = 30.0) -> KernelOutcome:
    return loop.run(kernel.execute(code, timeout_s))


# --------------------------------------------------------------------------- python semantics


def test_state_persists(loop: Loop, kernel: PythonKernel) -> None:
    assert run(loop, kernel, "counter = 41").status == "ok"
    out = run(loop, kernel, "counter += 1\ncounter")
    assert (out.status, out.has_result, out.result) == ("ok", True, 42)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("2", 2),
        ("'a'", "a"),
        ("[1, 2]", [1, 2]),
        ("{'k': [True, None, 1.5]}", {"k": [True, None, 1.5]}),
        ("float('nan')", "nan"),
        ("(1, 2)", "(1, 2)"),
    ],
)
def test_last_expression_values(loop: Loop, kernel: PythonKernel, expr: str, expected: Any) -> None:
    out = run(loop, kernel, expr)
    assert out.has_result
    assert out.result == expected


def test_object_result_is_repr_and_statement_has_none(loop: Loop, kernel: PythonKernel) -> None:
    out = run(loop, kernel, "class Thing:\n    def __repr__(self): return 'Thing!'\nThing()")
    assert out.result == "Thing!"
    out = run(loop, kernel, "y = 3")
    assert (out.has_result, out.result) == (False, None)


def test_streams(loop: Loop, kernel: PythonKernel) -> None:
    out = run(loop, kernel, "import sys\nprint('to out')\nprint('to err', file=sys.stderr)")
    assert out.stdout == "to out\n"
    assert out.stderr == "to err\n"
    assert out.duration_ms >= 0


def test_exception_is_error_with_plain_traceback(loop: Loop, kernel: PythonKernel) -> None:
    out = run(loop, kernel, "print('before')\nraise ValueError('boom')")
    assert out.status == "error"
    assert out.stdout == "before\n"
    assert "ValueError: boom" in out.stderr
    assert "\x1b[" not in out.stderr


def test_matplotlib_figure_gives_png(loop: Loop, kernel: PythonKernel) -> None:
    pytest.importorskip("matplotlib_inline")
    out = run(loop, kernel, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()", 60)
    assert out.status == "ok", out.stderr
    assert [fmt for fmt, _ in out.images] == ["png"]
    assert out.images[0][1].startswith("iVBORw0KGgo")  # base64 of the PNG signature


def test_session_dir_is_writable_and_shared_with_shell(
    loop: Loop, kernel: PythonKernel, sandbox: Sandbox, session_dir: Path
) -> None:
    out = run(loop, kernel, "open('/mnt/data/from_py.txt', 'w').write('py data')")
    assert out.status == "ok", out.stderr
    host_file = session_dir / "from_py.txt"
    assert host_file.read_text() == "py data"
    assert host_file.stat().st_uid == os.getuid()
    sh = loop.run(run_shell(sandbox, session_dir, command="cat from_py.txt; pwd", timeout_s=10))
    assert sh.stdout == "py data/mnt/data\n"


# --------------------------------------------------------------------------- escape probes


def test_cannot_read_host_files(loop: Loop, kernel: PythonKernel) -> None:
    secrets_dir = Path("/root") if os.access("/root", os.W_OK) else Path("/work")
    secret = secrets_dir / f"dsmcp-secret-{secrets.token_hex(4)}"
    secret.write_text("top secret")
    try:
        out = run(loop, kernel, f"open({str(secret)!r}).read()")
        assert out.status == "error"
        assert "FileNotFoundError" in out.stderr
        out = run(loop, kernel, "open('/mnt/data/../../etc/shadow').read()")
        assert out.status == "error"
    finally:
        secret.unlink()


def test_cannot_reach_host_loopback(loop: Loop, kernel: PythonKernel) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        out = run(loop, kernel, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)")
        assert out.status == "error"
        assert "ConnectionRefusedError" in out.stderr
    finally:
        server.close()


def test_not_root_and_cannot_write_usr_or_host(loop: Loop, kernel: PythonKernel, tmp_path: Path) -> None:
    out = run(loop, kernel, "import os\nos.getuid(), os.geteuid()")
    assert out.result == "(1000, 1000)"
    out = run(loop, kernel, "open('/usr/pwned', 'w')")
    assert out.status == "error"
    assert "Read-only file system" in out.stderr
    target = tmp_path / "escaped.txt"
    out = run(loop, kernel, f"open({str(target)!r}, 'w').write('x')")
    assert out.status == "error"
    assert not target.exists()


def test_proc_shows_only_sandbox_processes(loop: Loop, kernel: PythonKernel) -> None:
    out = run(loop, kernel, "import os\nsorted(int(p) for p in os.listdir('/proc') if p.isdigit())")
    assert isinstance(out.result, list)
    assert os.getpid() not in out.result
    assert max(out.result) < 50, out.result


# --------------------------------------------------------------------------- shell


def test_shell_exit_code_and_streams(loop: Loop, sandbox: Sandbox, session_dir: Path) -> None:
    out = loop.run(run_shell(sandbox, session_dir, command="echo hi; echo oops >&2; exit 3", timeout_s=10))
    assert (out.exit_code, out.stdout, out.stderr, out.timed_out) == (3, "hi\n", "oops\n", False)


def test_shell_argv_and_stdin(loop: Loop, sandbox: Sandbox, session_dir: Path) -> None:
    out = loop.run(run_shell(sandbox, session_dir, argv=["/bin/cat", "-n"], stdin="line\n", timeout_s=10))
    assert (out.exit_code, out.stdout.split()) == (0, ["1", "line"])
    out = loop.run(run_shell(sandbox, session_dir, argv=["id", "-u"], timeout_s=10))
    assert out.stdout == "1000\n"


def test_shell_timeout_kills_tree(loop: Loop, sandbox: Sandbox, session_dir: Path) -> None:
    started = time.monotonic()
    out = loop.run(run_shell(sandbox, session_dir, command="sleep 60 & sleep 60", timeout_s=1))
    assert out.timed_out
    assert out.exit_code == 124
    assert time.monotonic() - started < 5


def test_shell_requires_exactly_one_form(loop: Loop, sandbox: Sandbox, session_dir: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        loop.run(run_shell(sandbox, session_dir, command="true", argv=["true"], timeout_s=1))


# --------------------------------------------------------------------------- limits and lifecycle


def test_runaway_loop_times_out_and_session_survives(loop: Loop, kernel: PythonKernel) -> None:
    run(loop, kernel, "survivor = 'still here'")
    started = time.monotonic()
    out = run(loop, kernel, "while True: pass", timeout_s=2)
    elapsed = time.monotonic() - started
    assert out.status == "timeout"
    assert 1.9 < elapsed < 6
    assert out.message is not None and "exceeded 2 s" in out.message
    # The interrupt worked, so the kernel and its state are kept (documented in the message).
    assert kernel.alive
    assert run(loop, kernel, "survivor").result == "still here"


def test_uninterruptible_code_kills_the_sandbox(loop: Loop, sandbox: Sandbox, tmp_path: Path) -> None:
    k = loop.run(PythonKernel.start(sandbox, tmp_path))
    try:
        # SIGINT is ignored, so the interrupt cannot stop it: the sandbox must be killed.
        code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile 1: time.sleep(0.05)"
        started = time.monotonic()
        out = loop.run(k.execute(code, 1))
        assert out.status == "timeout"
        assert time.monotonic() - started < 6
        assert out.message is not None and "killed" in out.message
        assert not k.alive
        assert loop.run(k.execute("1", 5)).status == "died"
    finally:
        loop.run(k.shutdown())
        loop.run(k.shutdown())  # idempotent


def test_memory_hog_dies_with_memory_message(loop: Loop, tmp_path: Path) -> None:
    small = Sandbox(Limits(memory_mb=256))
    k = loop.run(PythonKernel.start(small, tmp_path))
    try:
        started = time.monotonic()
        out = loop.run(k.execute("hog = b'1' * (1 << 30)", 30))
        assert time.monotonic() - started < 15
        if os.access("/sys/fs/cgroup/memory", os.W_OK):  # the cgroup OOM killer applies here
            assert out.status == "died"
            assert out.message is not None and "out of memory" in out.message and "256 MB" in out.message
            assert not k.alive
        else:  # rlimits only: RLIMIT_AS makes the allocation raise
            assert out.status == "error"
            assert "MemoryError" in out.stderr
    finally:
        loop.run(k.shutdown())


def test_self_test_and_missing_bwrap(sandbox: Sandbox) -> None:
    sandbox.self_test()
    assert sandbox.isolation == "bubblewrap"
    missing = Sandbox(Limits(), bwrap_path="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable) as info:
        missing.self_test()
    assert "apt-get install bubblewrap" in str(info.value)
    assert "--unsafe-no-sandbox" in str(info.value)


def test_no_cgroup_dirs_left_behind(loop: Loop, sandbox: Sandbox, session_dir: Path) -> None:
    loop.run(run_shell(sandbox, session_dir, command="true", timeout_s=5))
    parent = Path("/sys/fs/cgroup/pids/dsmcp")
    if parent.is_dir():
        left = {p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith("sh-")}
        assert left == set()


def test_unsafe_mode_runs_in_the_session_dir(loop: Loop, tmp_path: Path) -> None:
    unsafe = Sandbox(Limits(), unsafe_no_sandbox=True)
    unsafe.self_test()  # nothing to test: no isolation was asked for
    assert unsafe.isolation == "none"
    out = loop.run(run_shell(unsafe, tmp_path, command="pwd; ulimit -n", timeout_s=10))
    assert out.stdout == f"{tmp_path}\n1024\n"
