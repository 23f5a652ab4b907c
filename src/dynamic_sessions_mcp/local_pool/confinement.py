"""Tier B: confining a process without namespaces (Landlock + seccomp + rlimits + its own session).

For machines where bubblewrap cannot create user namespaces (Ubuntu >= 23.10's AppArmor rule,
Docker's default seccomp profile, most Kubernetes pods). See shared/reference/local-sandbox.md §2.4.

What sandboxed code gets, and how it differs from tier A:
- **Paths.** There is no mount namespace, so `/mnt/data` does not exist: the session directory is
  the working directory at its host path, and code must use relative paths (`open("out.csv")`),
  which work the same in every tier. `HOME` and `TMPDIR` are a private directory per sandbox.
- **Files.** Landlock allows read+execute on /usr, the interpreter's prefixes and a few /etc
  files, read+write on the session directory, the private temp dir and the kernel's connection
  dir, and nothing else (no /proc, no /tmp, no /dev/shm, no ptys, no host home). Landlock does not
  cover metadata, so seccomp makes `chmod`/`utime` on paths silent no-ops and denies `chown`,
  xattr setters and (ABI < 3) `truncate` on paths. What remains visible is metadata: `stat` of a
  host path the code can name (never its contents or a directory listing).
- **Network.** seccomp denies IPv4/IPv6/packet sockets, `connect` and Unix datagram sockets, and
  Landlock (ABI >= 4) denies TCP bind/connect. ipykernel's loopback output pipe is therefore off:
  output printed by `os.fork()` children is lost (subprocess output is still captured).
- **Processes.** No PID namespace: the sandbox runs in its own session (`setsid` is denied, so it
  cannot leave it) and is killed by cgroup.kill where cgroups are writable, otherwise by killing
  every process of that session. Landlock ABI >= 6 stops signals leaving the sandbox; older
  kernels only stop `kill(-1)`.
- **Users.** A server running as root runs sandboxes as `nobody` (65534) with no capabilities but
  CAP_DAC_READ_SEARCH, which only lets it traverse root-only directories to its own runtime and
  session dir: Landlock, not file modes, is the boundary. Entries the server creates in the session
  dir (uploads) are handed to `nobody` before each execution so code can modify them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dynamic_sessions_mcp.local_pool import landlock, seccomp

logger = logging.getLogger(__name__)

NOBODY = 65534
_CAP_DAC_READ_SEARCH = 2
_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAPABILITY_VERSION_3 = 0x20080522
_MAX_ADOPT_ENTRIES = 10_000
_KILL_ROUNDS = 50

# Read-only system files a Python or bash process needs; everything else in /etc stays hidden.
_ETC_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/nsswitch.conf", "/etc/host.conf", "/etc/hosts", "/etc/gai.conf", "/etc/fonts",
    "/etc/alternatives", "/etc/mime.types", "/etc/ssl", "/etc/debian_version", "/etc/inputrc",
)  # fmt: skip
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
_DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/full")
_DEVICES_RO = ("/dev/random", "/dev/urandom", "/sys/devices/system/cpu")

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _cap_last() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


class _DropRoot:
    """Root -> nobody, keeping only CAP_DAC_READ_SEARCH (bounding, permitted, effective, ambient).
    Built before the fork; `apply` runs in the child."""

    def __init__(self) -> None:
        self._drop = [c for c in range(_cap_last() + 1) if c != _CAP_DAC_READ_SEARCH]
        self._header = _CapHeader(_CAPABILITY_VERSION_3, 0)
        keep = 1 << _CAP_DAC_READ_SEARCH
        self._data = (_CapData * 2)(_CapData(keep, keep, keep), _CapData(0, 0, 0))

    def apply(self) -> None:
        for cap in self._drop:
            seccomp.prctl_or_raise(_PR_CAPBSET_DROP, cap, "prctl(PR_CAPBSET_DROP)")
        seccomp.prctl_or_raise(_PR_SET_KEEPCAPS, 1, "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        if _libc.capset(ctypes.byref(self._header), self._data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
        seccomp.prctl_or_raise(
            _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, "prctl(PR_CAP_AMBIENT_RAISE)", _CAP_DAC_READ_SEARCH
        )


def sandbox_uid() -> int:
    """The uid tier-B sandboxes run as: nobody under a root server, else the server's own uid."""
    return NOBODY if os.geteuid() == 0 else os.geteuid()


@dataclass
class Confinement:
    """One tier-B launch, prepared in the server: the Landlock ruleset, the seccomp program and
    the privilege drop. `apply` runs in the child between fork and exec; `close` afterwards."""

    ruleset: landlock.Ruleset
    filter: seccomp.Installer
    drop_root: _DropRoot | None

    def apply(self) -> None:
        """Fail closed: any step that does not work raises, and the command never runs."""
        if self.drop_root is not None:
            self.drop_root.apply()
        seccomp.set_no_new_privs()
        # After the uid change, which would clear it: the kernel dies with the server.
        seccomp.prctl_or_raise(_PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PR_SET_PDEATHSIG)")
        self.ruleset.restrict_self()
        self.filter.install()

    def close(self) -> None:
        self.ruleset.close()


def prepare(
    abi: int,
    program: bytes,
    *,
    session_dir: Path,
    private_dir: Path,
    runtime_prefixes: Iterable[str],
    rw_paths: Sequence[Path],
) -> Confinement:
    """Build the allowlist for one sandbox and hand its writable dirs to the sandbox user (the
    session and private dirs whole, the `rw_paths` with their direct entries)."""
    uid = sandbox_uid()
    writable = [session_dir, private_dir, *rw_paths]
    if uid != os.geteuid():
        for path in writable:
            adopt(path, uid, top_only=path in rw_paths)
    ruleset = landlock.Ruleset(abi)
    try:
        for system in (*_SYSTEM_DIRS, *runtime_prefixes):
            ruleset.allow(system, landlock.READ_EXEC)
        for readable in (*_ETC_FILES, *_DEVICES_RO):
            ruleset.allow(readable, landlock.READ)
        for device in _DEVICES_RW:
            ruleset.allow(device, landlock.Fs.READ_FILE | landlock.Fs.WRITE_FILE)
        for path in writable:
            if not ruleset.allow(path, landlock.READ_WRITE):
                raise FileNotFoundError(errno.ENOENT, "sandbox directory is missing", str(path))
    except BaseException:
        ruleset.close()
        raise
    drop = _DropRoot() if uid != os.geteuid() else None
    return Confinement(ruleset, seccomp.Installer(program), drop)


# ---- handing host-created entries to the sandbox user (root servers only) -------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def adopt(root: Path, uid: int, *, top_only: bool = False) -> None:
    """chown to `uid` the server-owned directories and single-link regular files under `root`.

    The tree is sandbox-controlled: it is walked by fd with O_NOFOLLOW and each entry is checked
    through the fd it is chowned by, so a planted symlink or hard link to a host file is never
    followed or handed over."""
    me = os.geteuid()
    try:
        top = os.open(root, _DIR_FLAGS)
    except OSError:
        return
    budget = [_MAX_ADOPT_ENTRIES]
    try:
        _adopt_fd(top, uid, me)
        if not top_only:
            _adopt_tree(top, uid, me, budget)
        else:
            with os.scandir(top) as it:
                for entry in it:
                    _adopt_entry(top, entry.name, uid, me, budget, recurse=False)
    finally:
        os.close(top)


def _adopt_fd(fd: int, uid: int, me: int) -> None:
    st = os.fstat(fd)
    if st.st_uid == me and (stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1)):
        os.fchown(fd, uid, uid)


def _adopt_tree(dir_fd: int, uid: int, me: int, budget: list[int]) -> None:
    with os.scandir(dir_fd) as it:
        names = [e.name for e in it if not e.is_symlink()]
    for name in names:
        _adopt_entry(dir_fd, name, uid, me, budget, recurse=True)


def _adopt_entry(dir_fd: int, name: str, uid: int, me: int, budget: list[int], *, recurse: bool) -> None:
    if budget[0] <= 0:
        return
    budget[0] -= 1
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        elif stat.S_ISREG(st.st_mode) and st.st_uid == me:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        else:
            return
    except OSError:
        return  # changed under us: whatever it is now, leave it alone
    try:
        _adopt_fd(fd, uid, me)
        if recurse and stat.S_ISDIR(os.fstat(fd).st_mode):
            _adopt_tree(fd, uid, me, budget)
    except OSError as exc:
        logger.debug("could not hand %s to the sandbox user: %s", name, exc)
    finally:
        os.close(fd)


# ---- killing a sandbox without a PID namespace ----------------------------------------------


def _sessions(uid: int) -> Iterable[tuple[int, int]]:
    """(pid, session id) of every live (not zombie) process owned by `uid`."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            raw = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()  # state ppid pgrp session ...
        if len(fields) > 3 and fields[0] != b"Z":
            yield int(entry.name), int(fields[3])


def kill_session(sid: int, uid: int) -> int:
    """SIGKILL every process of `uid` in session `sid` until none is left (forks in flight are
    caught by the next round); returns how many signals were sent."""
    sent = 0
    for _ in range(_KILL_ROUNDS):
        found = [pid for pid, s in _sessions(uid) if s == sid and pid != os.getpid()]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                sent += 1
        time.sleep(0.005)
    return sent


def tasks_of(uid: int) -> int:
    """Threads owned by `uid` (what RLIMIT_NPROC counts)."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    total += len(os.listdir(f"/proc/{entry.name}/task"))
    return total
