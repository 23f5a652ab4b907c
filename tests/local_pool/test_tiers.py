"""Isolation tiers below the HTTP API: the seccomp filter, tier selection (including a real
Docker-like machine where namespaces are blocked), and tier B's own machinery (killing a sandbox
without a PID namespace, rlimits without cgroups, handing uploads to the sandbox user safely)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dynamic_sessions_mcp.local_pool import confinement, landlock, seccomp
from dynamic_sessions_mcp.local_pool.python_kernel import PythonKernel
from dynamic_sessions_mcp.local_pool.sandbox import Limits, Sandbox, SandboxUnavailable, Tier
from dynamic_sessions_mcp.local_pool.shell import run_shell
from dynamic_sessions_mcp.local_pool.tiers import explain_bwrap_failure

needs_landlock = pytest.mark.skipif(landlock.abi_version() < 1, reason="Landlock is not available")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

# --------------------------------------------------------------------------- seccomp


def _header_numbers(path: str, pattern: str) -> dict[str, int]:
    text = Path(path).read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, text)}


@pytest.mark.parametrize(
    ("arch", "header", "pattern"),
    [
        (seccomp.X86_64, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"#define __NR_(\w+)\s+(\d+)"),
        (seccomp.AARCH64, "/usr/include/asm-generic/unistd.h", r"#define __NR(?:3264)?_(\w+)\s+(\d+)"),
    ],
)
def test_syscall_tables_match_the_kernel_headers(arch: seccomp.Arch, header: str, pattern: str) -> None:
    if not Path(header).exists():
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    numbers = _header_numbers(header, pattern)
    newer = {"fchmodat2", "setxattrat", "removexattrat"}  # Linux 6.6 / 6.13: maybe not in the headers
    known = {name: number for name, number in arch.syscalls.items() if name in numbers or name not in newer}
    assert {name: numbers.get(name) for name in known} == known


def test_programs_assemble_for_both_arches() -> None:
    for arch in (seccomp.X86_64, seccomp.AARCH64):
        for profile in seccomp.Profile:
            program = seccomp.build(profile, arch)
            assert len(program) % 8 == 0 and 0 < len(program) // 8 < 200


# Run in a child that loaded the filter: {probe: errno name, or "ok"}.
_PROBE = textwrap.dedent(
    """
    import ctypes, errno, json, os, socket, subprocess, sys, threading
    from dynamic_sessions_mcp.local_pool.seccomp import native_arch
    nr = native_arch().syscalls
    libc = ctypes.CDLL(None, use_errno=True)
    NAME = ctypes.create_string_buffer(sys.argv[1].encode())
    XATTR = ctypes.create_string_buffer(b"user.dsmcp")
    os.chmod(NAME.value, 0o644)
    def sc(name, *args):
        r = libc.syscall(nr[name], *[ctypes.c_long(a) for a in args])
        if r == 0 and name == "clone":
            os._exit(0)  # only reached if the filter failed: the raw clone forked
        return errno.errorcode[ctypes.get_errno()] if r == -1 else "ok"
    def sock(family, kind=socket.SOCK_STREAM):
        try:
            socket.socket(family, kind).close()
            return "ok"
        except OSError as exc:
            return errno.errorcode[exc.errno]
    out = {
        "ptrace": sc("ptrace", 0, 0, 0, 0),
        "keyctl": sc("keyctl", 0, -3),
        "unshare": sc("unshare", 0x10000000),
        "clone_newuser": sc("clone", 0x10000000 | 17, 0, 0, 0, 0),
        "clone3": sc("clone3", 0, 0),
        "io_uring_setup": sc("io_uring_setup", 0, 0),
        "inet": sock(socket.AF_INET),
        "inet6": sock(socket.AF_INET6),
        "packet": sock(socket.AF_PACKET, socket.SOCK_RAW),
        "vsock": sock(40),
        "unix_stream": sock(socket.AF_UNIX),
        "unix_dgram": sock(socket.AF_UNIX, socket.SOCK_DGRAM),
        "netlink": sock(socket.AF_NETLINK, socket.SOCK_RAW),
        "connect": sc("connect", 0, 0, 0),
        "setsid": sc("setsid"),
        "kill_all": sc("kill", -1, 0),
        "prlimit_other": sc("prlimit64", 1, 7, 0, 0),
        "prlimit_self": sc("prlimit64", 0, 7, 0, 0),
        "shmget": sc("shmget", 0, 4096, 0),
        "chown": sc("fchownat", -100, ctypes.addressof(NAME), os.getuid(), os.getgid(), 0),
        "setxattr": sc("setxattr", ctypes.addressof(NAME), ctypes.addressof(XATTR), 0, 0, 0),
        "setpriority_user": sc("setpriority", 2, 0, 19),
        "setpriority_other": sc("setpriority", 0, os.getppid(), 19),
        "setpriority_self": sc("setpriority", 0, 0, 1),
        "ioprio_user": sc("ioprio_set", 3, 0, 0),
    }
    os.chmod(NAME.value, 0o700)  # a silent no-op without namespaces
    out["chmod_noop"] = "noop" if os.stat(NAME.value).st_mode & 0o777 == 0o644 else "changed"
    os.utime(NAME.value, (0, 0))
    out["utime_noop"] = "noop" if os.stat(NAME.value).st_mtime > 0 else "changed"
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    out["thread"] = "ok"
    out["spawn"] = "ok" if subprocess.run(["/bin/true"]).returncode == 0 else "failed"
    print(json.dumps(out))
    """
)


def _probe_under(profile: seccomp.Profile, tmp_path: Path) -> dict[str, str]:
    installer = seccomp.Installer(seccomp.build(profile))
    target = tmp_path / "target.txt"
    target.write_text("x")

    def confine() -> None:
        seccomp.set_no_new_privs()
        installer.install()

    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(target)],
        preexec_fn=confine,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def test_filter_for_namespaced_sandboxes(tmp_path: Path) -> None:
    got = _probe_under(seccomp.Profile.NAMESPACES, tmp_path)
    denied = ("ptrace", "keyctl", "unshare", "clone_newuser", "io_uring_setup", "packet", "vsock")
    assert {k: got[k] for k in denied} == dict.fromkeys(denied, "EPERM")
    assert got["clone3"] == "ENOSYS"  # glibc then falls back to clone: threads and spawn work
    allowed = ("inet", "inet6", "unix_stream", "unix_dgram", "netlink", "thread", "spawn", "prlimit_self")
    assert {k: got[k] for k in allowed} == dict.fromkeys(allowed, "ok")
    assert (got["chmod_noop"], got["utime_noop"], got["chown"]) == ("changed", "changed", "ok")


def test_filter_without_namespaces_also_guards_the_network_processes_and_metadata(tmp_path: Path) -> None:
    got = _probe_under(seccomp.Profile.NO_NAMESPACES, tmp_path)
    denied = (
        "ptrace", "keyctl", "unshare", "clone_newuser", "io_uring_setup", "inet", "inet6", "packet",
        "vsock", "unix_dgram", "connect", "setsid", "kill_all", "prlimit_other", "shmget", "chown",
        "setxattr", "setpriority_user", "setpriority_other", "ioprio_user",
    )  # fmt: skip
    assert {k: got[k] for k in denied} == dict.fromkeys(denied, "EPERM")
    assert got["clone3"] == "ENOSYS"
    allowed = ("unix_stream", "netlink", "thread", "spawn", "prlimit_self", "setpriority_self")
    assert {k: got[k] for k in allowed} == dict.fromkeys(allowed, "ok")
    assert (got["chmod_noop"], got["utime_noop"]) == ("noop", "noop")


# --------------------------------------------------------------------------- tier selection


@pytest.mark.parametrize(
    ("stderr", "advice"),
    [
        ("bwrap: setting up uid map: Permission denied", "apparmor_restrict_unprivileged_userns=0"),
        ("bwrap: loopback: Failed RTM_NEWADDR: Operation not permitted", "bwrap-userns-restrict"),
        ("bwrap: No permissions to create new namespace, likely because", "seccomp=unconfined"),
        ("bwrap: Creating new namespace failed: No space left on device", "max_user_namespaces"),
    ],
)
def test_known_bwrap_failures_become_instructions(stderr: str, advice: str) -> None:
    assert advice in explain_bwrap_failure(stderr)


def test_isolation_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="auto, bubblewrap, landlock, none"):
        Sandbox(Limits(), isolation="chroot")


def test_isolation_none_is_an_explicit_opt_in(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sandbox = Sandbox(Limits(), isolation="none")
    assert sandbox.isolation == "none" and sandbox.tier is None
    sandbox.self_test()
    assert sandbox.tier is Tier.NONE and sandbox.unsafe_no_sandbox
    assert "isolation tier: none" in caplog.text


# A machine like a Docker container with its default seccomp profile: user namespaces are
# blocked by seccomp. Reproduced for real by loading our own namespace-denying filter first.
_DOCKER_LIKE = textwrap.dedent(
    """
    import asyncio, logging, sys, tempfile
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from dynamic_sessions_mcp.local_pool.sandbox import Limits, Sandbox, SandboxUnavailable
    from dynamic_sessions_mcp.local_pool.shell import run_shell
    sandbox = Sandbox(Limits(), isolation=sys.argv[1])
    try:
        sandbox.self_test()
    except SandboxUnavailable as exc:
        print("unavailable:", exc)
        sys.exit(0)
    out = asyncio.run(run_shell(sandbox, Path(tempfile.mkdtemp()), command="echo works", timeout_s=10))
    print(sandbox.isolation, out.stdout.strip())
    """
)


def _on_docker_like_machine(isolation: str) -> subprocess.CompletedProcess[str]:
    installer = seccomp.Installer(seccomp.build(seccomp.Profile.NAMESPACES))

    def block_namespaces() -> None:
        seccomp.set_no_new_privs()
        installer.install()

    return subprocess.run(
        [sys.executable, "-c", _DOCKER_LIKE, isolation],
        preexec_fn=block_namespaces,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_bwrap
@needs_landlock
def test_auto_falls_back_to_landlock_where_namespaces_are_blocked() -> None:
    proc = _on_docker_like_machine("auto")
    assert proc.stdout.strip() == "landlock works", proc.stdout + proc.stderr
    assert "No permissions to create new namespace" in proc.stderr  # logged, with the fix
    assert "seccomp=unconfined" in proc.stderr
    assert "isolation tier: landlock" in proc.stderr


@needs_bwrap
def test_forced_bubblewrap_fails_with_instructions_where_namespaces_are_blocked() -> None:
    proc = _on_docker_like_machine("bubblewrap")
    assert proc.stdout.startswith("unavailable:"), proc.stdout + proc.stderr
    assert "seccomp=unconfined" in proc.stdout and "--unsafe-no-sandbox" in proc.stdout


def test_missing_bwrap_asks_to_install_it_rather_than_falling_back() -> None:
    sandbox = Sandbox(Limits(), bwrap_path="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable) as info:
        sandbox.self_test()
    assert "apt-get install bubblewrap" in str(info.value)
    assert "isolation 'landlock'" in str(info.value)


# --------------------------------------------------------------------------- tier B machinery


@needs_landlock
def test_tier_b_without_cgroups_kills_the_whole_session_and_bounds_forks(tmp_path: Path) -> None:
    sandbox = Sandbox(Limits(pids_max=48), isolation="landlock", use_cgroups=False)
    sandbox.self_test()

    async def scenario() -> None:
        started = time.monotonic()
        out = await run_shell(
            sandbox,
            tmp_path,
            command="sleep 300 & (sleep 301 &); setsid sleep 302; sleep 303",
            timeout_s=1,
        )
        assert out.timed_out and time.monotonic() - started < 5
        assert "Operation not permitted" in out.stderr  # setsid: cannot leave the session
        forks = await run_shell(
            sandbox,
            tmp_path,
            argv=[
                sys.executable,
                "-c",
                "import os, time\nn = 0\nwhile n < 500:\n    try:\n        pid = os.fork()\n"
                "    except OSError:\n        break\n    if pid == 0:\n        os.closerange(0, 3)\n"
                "        time.sleep(20)\n        os._exit(0)\n    n += 1\nprint(n)",
            ],
            timeout_s=15,
        )
        assert forks.exit_code == 0, forks.stderr
        assert 0 < int(forks.stdout) <= 48

    asyncio.run(scenario())
    # Without cgroups or a PID namespace, the kill found every process of each sandbox's session.
    pattern = r"sleep 30[0-3]|time\.sleep\(20\)"
    leftovers = subprocess.run(
        ["pgrep", "-u", str(confinement.sandbox_uid()), "-f", pattern], capture_output=True, text=True
    )
    assert leftovers.stdout == ""


@needs_landlock
def test_tier_b_without_cgroups_memory_hog_gets_memory_error(tmp_path: Path) -> None:
    sandbox = Sandbox(Limits(memory_mb=512), isolation="landlock", use_cgroups=False)
    sandbox.self_test()

    async def scenario() -> None:
        kernel = await PythonKernel.start(sandbox, tmp_path)
        try:
            out = await kernel.execute("hog = [b'x' * (64 << 20) for _ in range(40)]", 30)
            assert out.status == "error" and "MemoryError" in out.stderr
            assert (await kernel.execute("6*7", 10)).result == 42  # the kernel survives
        finally:
            await kernel.shutdown()

    asyncio.run(scenario())


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs a root server")
def test_handing_uploads_over_never_follows_planted_links(tmp_path: Path) -> None:
    session = tmp_path / "session"
    (session / "sub").mkdir(parents=True)
    upload = session / "sub" / "upload.csv"
    upload.write_text("a,b\n")
    host_file = tmp_path / "host-owned.txt"
    host_file.write_text("keep root's")
    (session / "link").symlink_to(host_file)
    os.link(host_file, session / "hardlink")
    confinement.adopt(session, confinement.NOBODY)
    assert upload.stat().st_uid == confinement.NOBODY
    assert (session / "sub").stat().st_uid == confinement.NOBODY
    assert host_file.stat().st_uid == 0  # neither the symlink nor the hard link was followed
    assert (session / "link").lstat().st_uid == 0


def test_landlock_abi_features() -> None:
    abi = landlock.abi_version()
    if abi < 1:
        pytest.skip("Landlock is not available")
    assert landlock.Fs.READ_FILE in landlock.handled_fs(1)
    assert landlock.Fs.REFER not in landlock.handled_fs(1) and landlock.Fs.REFER in landlock.handled_fs(2)
    ruleset = landlock.Ruleset(abi)
    try:
        assert ruleset.allow("/usr", landlock.READ_EXEC)
        assert not ruleset.allow("/nonexistent-dsmcp", landlock.READ)
    finally:
        ruleset.close()
