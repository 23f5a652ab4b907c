"""Session lifecycle: idle cooldown reaps the session and kills its sandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local_pool.conftest import Api, new_identifier, serve_pool


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A Python pool whose sessions expire after 1 s idle (no warm kernels: cold starts)."""
    yield from serve_pool(tmp_path_factory.mktemp("cooldown-pool"), warm_sessions=0, cooldown_s=1.0)


def running_pid(pid: int) -> bool:
    """Alive and not a zombie (a killed sandbox's inner bwrap may wait a while for init to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def processes_in_cgroup(name: str) -> list[int]:
    """Host PIDs whose cgroup path ends with the sandbox id (the sandbox names its cgroup so)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if any(line.endswith(f"/{name}") for line in cgroups.splitlines()) and running_pid(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def test_idle_session_is_reaped_with_its_sandbox(brief: Api) -> None:
    ident = new_identifier()
    assert brief.run(ident, "state = 'alive'\nopen('f.txt', 'w').write('x')")["status"] == "Succeeded"
    etag = brief.session(ident).json()["etag"]
    sandboxed = processes_in_cgroup(etag)
    # Calls keep it alive: each one resets the idle timer.
    for _ in range(3):
        time.sleep(0.5)
        assert brief.run(ident, "state")["result"]["executionResult"] == "alive"
    # Poll with listSessions: it names no session, so it does not keep ours alive (GET session would).
    deadline = time.monotonic() + 10
    while ident in [s["identifier"] for s in brief.call("GET", "listSessions").json()["sessions"]]:
        assert time.monotonic() < deadline, "the idle session was not reaped"
        time.sleep(0.2)
    assert brief.session(ident).status_code == 404
    if sandboxed:  # cgroups are writable here: the kernel's processes must go (the kill takes a moment)
        deadline = time.monotonic() + 5
        while any(running_pid(pid) for pid in sandboxed):
            assert time.monotonic() < deadline, "the reaped session's processes are still running"
            time.sleep(0.1)
    # The identifier now gets a fresh, empty session.
    body = brief.run(ident, "import os\n(os.listdir('.'), 'state' in globals())")
    assert body["result"]["executionResult"] == "([], False)"
    assert brief.session(ident).json()["etag"] != etag
    brief.end(ident)


def test_session_dirs_are_random_and_removed(brief: Api) -> None:
    ident = new_identifier()
    brief.run(ident, "open('/mnt/data/where.txt', 'w').write('here')")
    found = list(brief.data_dir.rglob("where.txt"))
    assert len(found) == 1
    assert ident not in str(found[0])  # never derived from the identifier
    brief.end(ident)
    assert not found[0].exists() and not found[0].parent.exists()
