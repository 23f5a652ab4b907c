"""Isolation for the local pool: a bubblewrap profile plus cgroup and rlimit resource limits.

Every sandboxed process sees only /usr, the Python runtime (read-only), a private /tmp and its
session directory at /mnt/data, with an empty network namespace and a non-root uid. See
shared/reference/local-sandbox.md §7 for the measurements behind each flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig

logger = logging.getLogger(__name__)

SANDBOX_DATA_DIR = "/mnt/data"
SANDBOX_UID = 1000
_SANDBOX_TMP = "/tmp"  # noqa: S108 - the sandbox's private tmpfs, not the host's /tmp
_SANDBOX_MPL = f"{_SANDBOX_TMP}/mpl"
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_PARENT = "dsmcp"
_PASSWD = f"user:x:{SANDBOX_UID}:{SANDBOX_UID}:user:/tmp:/bin/bash\n".encode()
_GROUP = f"user:x:{SANDBOX_UID}:\n".encode()
_HOSTS = b"127.0.0.1 localhost sandbox\n::1 localhost\n"
_SELF_TEST_TIMEOUT_S = 20.0


class SandboxUnavailable(Exception):
    """bubblewrap cannot run here; the message says how to fix it or how to opt out."""


@dataclass(frozen=True)
class Limits:
    """Per-sandbox resource limits (cgroups where writable, rlimits always)."""

    memory_mb: int = 2048
    pids_max: int = 256
    cpus: float = 1.0
    fsize_bytes: int = 128 * 1024 * 1024
    nofile: int = 1024

    @classmethod
    def from_config(cls, config: LocalPoolConfig) -> Limits:
        return cls(
            memory_mb=config.memory_mb,
            pids_max=config.pids_max,
            cpus=config.cpus,
            fsize_bytes=config.max_upload_bytes,
        )

    @property
    def threads(self) -> int:
        """Thread count for BLAS/OpenMP pools: the CPU quota, rounded up."""
        return max(1, math.ceil(self.cpus))


# --------------------------------------------------------------------------- cgroups


@dataclass(frozen=True)
class _CgroupLayout:
    """Where each controller lives on this host: v1 per-controller mounts and/or a v2 mount."""

    v1: Mapping[str, Path]  # controller -> mount point (memory, pids, cpu)
    v2: Path | None  # cgroup2 mount (unified), used for cgroup.kill and v2 controllers

    @classmethod
    def detect(cls) -> _CgroupLayout:
        v1: dict[str, Path] = {}
        v2: Path | None = None
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return cls({}, None)
        for line in mounts.splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            mount_point, fstype, options = Path(parts[1]), parts[2], parts[3].split(",")
            if fstype == "cgroup2" and v2 is None:
                v2 = mount_point
            elif fstype == "cgroup":
                for ctrl in ("memory", "pids", "cpu"):
                    if ctrl in options:
                        v1.setdefault(ctrl, mount_point)
        return cls(v1, v2)


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError as exc:
        logger.debug("cgroup write %s=%s failed: %s", path, value, exc)
        return False
    return True


@dataclass
class Cgroup:
    """The cgroup directories of one sandbox; every operation is best effort and never raises."""

    dirs: list[Path] = field(default_factory=list)
    memory_dir: Path | None = None  # where the memory limit applied (for the OOM counter)
    kill_file: Path | None = None  # cgroup.kill of a v2 dir, when the kernel has it

    @property
    def memory_limited(self) -> bool:
        return self.memory_dir is not None

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    @classmethod
    def create(cls, layout: _CgroupLayout, name: str, limits: Limits) -> Cgroup:
        cg = cls()
        memory = str(limits.memory_mb * 1024 * 1024)
        quota = max(1000, int(limits.cpus * 100_000))
        v1_writes = {
            "memory": [("memory.limit_in_bytes", memory)],
            "pids": [("pids.max", str(limits.pids_max))],
            "cpu": [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", str(quota))],
        }
        for ctrl, mount in layout.v1.items():
            d = cg._mkdir(mount / _CGROUP_PARENT / name)
            if d is not None and all(_write(d / f, v) for f, v in v1_writes[ctrl]) and ctrl == "memory":
                cg.memory_dir = d
        if layout.v2 is not None:
            cg._create_v2(layout.v2, name, limits, memory, quota, set(layout.v1))
        return cg

    def _create_v2(
        self, mount: Path, name: str, limits: Limits, memory: str, quota: int, v1_ctrls: set[str]
    ) -> None:
        parent = mount / _CGROUP_PARENT
        try:
            available = set((mount / "cgroup.controllers").read_text().split())
        except OSError:
            available = set()
        wanted = sorted(({"memory", "pids", "cpu"} & available) - v1_ctrls)
        if self._mkdir(parent) is None:
            return
        for ctrl in wanted:
            # Enable the controller down the two levels; failure just means no such v2 limit.
            _write(mount / "cgroup.subtree_control", f"+{ctrl}")
            _write(parent / "cgroup.subtree_control", f"+{ctrl}")
        d = self._mkdir(parent / name)
        if d is None:
            return
        if (d / "cgroup.kill").exists():
            self.kill_file = d / "cgroup.kill"
        if "memory" in wanted and _write(d / "memory.max", memory):
            _write(d / "memory.swap.max", "0")
            self.memory_dir = d
        if "pids" in wanted:
            _write(d / "pids.max", str(limits.pids_max))
        if "cpu" in wanted:
            _write(d / "cpu.max", f"{quota} 100000")

    def _mkdir(self, path: Path) -> Path | None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.debug("cgroup mkdir %s failed: %s", path, exc)
            return None
        if path.name != _CGROUP_PARENT:
            self.dirs.append(path)
        return path

    def oom_kills(self) -> int:
        """How many times the OOM killer fired in this sandbox's memory cgroup."""
        if self.memory_dir is None:
            return 0
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (self.memory_dir / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
        return 0

    def kill(self) -> None:
        if self.kill_file is not None:
            _write(self.kill_file, "1")

    async def remove(self) -> None:
        """rmdir every dir; a cgroup can only go once its processes have exited, so retry briefly."""
        for _ in range(20):
            remaining = []
            for d in self.dirs:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    remaining.append(d)
            self.dirs = remaining
            if not remaining:
                return
            await asyncio.sleep(0.05)
        logger.debug("cgroup dirs left behind: %s", self.dirs)


# --------------------------------------------------------------------------- processes


@dataclass
class SandboxProcess:
    """A running sandboxed process tree and the cgroup holding it."""

    process: asyncio.subprocess.Process
    cgroup: Cgroup

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        """Kill the whole tree: cgroup.kill when available, and SIGKILL of bwrap (whose
        --die-with-parent and PID namespace take every descendant down). Never hangs."""
        self.cgroup.kill()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), timeout=5.0)
        await self.cgroup.remove()


def _data_fd(content: bytes) -> int:
    fd = os.memfd_create("dsmcp", 0)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _runtime_prefixes() -> list[str]:
    """Directories holding the interpreter and its packages (venv and base install)."""
    prefixes: list[str] = []
    for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))):
        real = os.path.realpath(p)
        for candidate in (p, real):
            if candidate.startswith("/usr/") or candidate == "/usr":
                continue
            if not any(candidate == q or candidate.startswith(q + "/") for q in prefixes):
                prefixes.append(candidate)
    return prefixes


class Sandbox:
    """Launches processes for one pool, each confined to its session directory (seen inside as /mnt/data)."""

    def __init__(
        self,
        limits: Limits,
        *,
        unsafe_no_sandbox: bool = False,
        bwrap_path: str | None = None,
        mpl_cache_dir: Path | None = None,
    ) -> None:
        self.limits = limits
        self.unsafe_no_sandbox = unsafe_no_sandbox
        self._bwrap = bwrap_path if bwrap_path is not None else (shutil.which("bwrap") or "bwrap")
        self._layout = _CgroupLayout.detect()
        self._is_root = os.geteuid() == 0
        self._has_inline_backend = importlib.util.find_spec("matplotlib_inline") is not None
        self._mpl_cache_dir = mpl_cache_dir
        self._font_list: Path | None = None
        self._font_tried = False
        self._font_lock = asyncio.Lock()

    @property
    def isolation(self) -> str:
        return "none" if self.unsafe_no_sandbox else "bubblewrap"

    @property
    def python(self) -> str:
        """The interpreter sandboxed Python processes run (the server's own, at its host path)."""
        return sys.executable

    # ------------------------------------------------------------------ self-test

    def self_test(self) -> None:
        """Run `bwrap <profile> -- /bin/true`; raise SandboxUnavailable with a fix when it fails."""
        if self.unsafe_no_sandbox:
            return
        if shutil.which(self._bwrap) is None:
            raise SandboxUnavailable(
                f"bubblewrap ({self._bwrap!r}) was not found. Install it: `apt-get install bubblewrap` "
                "(Debian/Ubuntu), `dnf install bubblewrap` (Fedora) or `pacman -S bubblewrap` (Arch). "
                + _OPT_OUT
            )
        with tempfile.TemporaryDirectory(prefix="dsmcp-selftest-") as tmp:
            argv, fds = self._bwrap_argv(Path(tmp), ["/bin/true"], rw_binds=())
            try:
                proc = subprocess.run(
                    argv,
                    pass_fds=fds,
                    capture_output=True,
                    timeout=_SELF_TEST_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxUnavailable(f"bubblewrap could not be run: {exc}. {_OPT_OUT}") from exc
            finally:
                for fd in fds:
                    os.close(fd)
        if proc.returncode != 0:
            raise SandboxUnavailable(_explain_failure(proc.stderr.decode(errors="replace").strip()))

    # ------------------------------------------------------------------ spawning

    def _env(self, *, home: str, mpl_dir: str) -> dict[str, str]:
        threads = str(self.limits.threads)
        env = {
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "USER": "user",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "JPY_PARENT_PID": "1",
            "MPLCONFIGDIR": mpl_dir,
        }
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            env[var] = threads
        if self._has_inline_backend:
            env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        return env

    def _bwrap_argv(
        self, session_dir: Path, command: Sequence[str], *, rw_binds: Sequence[Path]
    ) -> tuple[list[str], list[int]]:
        """The bwrap command line of §7.2 and the --ro-bind-data fds it reads (caller closes them)."""
        fds = [_data_fd(_PASSWD), _data_fd(_GROUP), _data_fd(_HOSTS)]
        argv = [
            self._bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID),
            "--cap-drop", "ALL",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
        ]  # fmt: skip
        for name in ("lib", "lib64", "bin", "sbin", "lib32", "libx32"):
            target = f"/usr/{name}"
            if os.path.isdir(target) and os.path.islink(f"/{name}"):
                argv += ["--symlink", f"usr/{name}", f"/{name}"]
            elif os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}"):
                argv += ["--ro-bind", f"/{name}", f"/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", _SANDBOX_TMP]  # tmpfs before binds under /tmp
        for etc in ("/etc/fonts", "/etc/alternatives"):
            if os.path.isdir(etc):
                argv += ["--ro-bind", etc, etc]
        argv += [
            "--ro-bind-data", str(fds[0]), "/etc/passwd",
            "--ro-bind-data", str(fds[1]), "/etc/group",
            "--ro-bind-data", str(fds[2]), "/etc/hosts",
        ]  # fmt: skip
        for prefix in _runtime_prefixes():
            argv += ["--ro-bind", prefix, prefix]
        argv += ["--dir", _SANDBOX_MPL]
        if self._font_list is not None:
            argv += ["--ro-bind", str(self._font_list), f"{_SANDBOX_MPL}/{self._font_list.name}"]
        for path in rw_binds:
            argv += ["--bind", str(path), str(path)]
        argv += ["--bind", str(session_dir), SANDBOX_DATA_DIR, "--chdir", SANDBOX_DATA_DIR]
        for key, value in self._env(home=_SANDBOX_TMP, mpl_dir=_SANDBOX_MPL).items():
            argv += ["--setenv", key, value]
        argv += ["--", *command]
        return argv, fds

    def _preexec(self, cgroup: Cgroup) -> tuple[Callable[[], None], list[int]]:
        """Runs in the child between fork and exec: join the cgroups, then set rlimits, so bwrap
        and every descendant start inside the limits. Only async-signal-tolerant work here."""
        limits = self.limits
        procs_fds = []
        for f in cgroup.procs_files:
            try:
                procs_fds.append(os.open(f, os.O_WRONLY | os.O_CLOEXEC))
            except OSError as exc:
                logger.debug("cannot open %s: %s", f, exc)
        rlimits: list[tuple[int, int]] = [
            (resource.RLIMIT_NOFILE, limits.nofile),
            (resource.RLIMIT_FSIZE, limits.fsize_bytes),
            (resource.RLIMIT_CORE, 0),
        ]
        if not cgroup.memory_limited:
            rlimits.append((resource.RLIMIT_AS, 2 * limits.memory_mb * 1024 * 1024))
        if not self._is_root:
            rlimits.append((resource.RLIMIT_NPROC, limits.pids_max))

        def preexec() -> None:
            for fd in procs_fds:
                with contextlib.suppress(OSError):
                    os.write(fd, b"0")
            for which, value in rlimits:
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(which, (value, value))

        return preexec, procs_fds

    async def spawn(
        self,
        name: str,
        session_dir: Path,
        command: Sequence[str],
        *,
        rw_binds: Sequence[Path] = (),
        stdin: int | None = subprocess.DEVNULL,
        stdout: Any = subprocess.DEVNULL,
        stderr: Any = subprocess.DEVNULL,
    ) -> SandboxProcess:
        """Start `command` in a new sandbox named `name` (its cgroup name) on `session_dir`."""
        cgroup = Cgroup.create(self._layout, name, self.limits)
        if self.unsafe_no_sandbox:
            argv, fds, cwd = list(command), list[int](), str(session_dir)
            tmp = tempfile.gettempdir()
            env: dict[str, str] | None = self._env(home=tmp, mpl_dir=f"{tmp}/dsmcp-mpl-{os.getuid()}")
        else:
            argv, fds = self._bwrap_argv(session_dir, command, rw_binds=rw_binds)
            cwd, env = None, {"PATH": "/usr/bin:/bin"}
        preexec, procs_fds = self._preexec(cgroup)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=fds,
                cwd=cwd,
                env=env,
                preexec_fn=preexec,
                start_new_session=True,
            )
        except BaseException:
            await cgroup.remove()
            raise
        finally:
            for fd in [*fds, *procs_fds]:
                os.close(fd)
        return SandboxProcess(process, cgroup)

    async def prepare_font_cache(self) -> None:
        """Build matplotlib's font list once on the host so the first plot in a fresh sandbox does not
        spend ~0.5 s rebuilding it (pitfall 11). Best effort: without it plots still work.
        `mpl_cache_dir` keeps it across runs; by default a private temp dir is used."""
        if self._font_tried or self.unsafe_no_sandbox:
            return
        if importlib.util.find_spec("matplotlib") is None:
            return
        async with self._font_lock:
            if self._mpl_cache_dir is None:  # private to this process, removed with the Sandbox
                self._mpl_cache_dir = Path(tempfile.mkdtemp(prefix="dsmcp-mpl-"))
                weakref.finalize(self, shutil.rmtree, self._mpl_cache_dir, True)
            await self._build_font_cache(self._mpl_cache_dir)

    async def _build_font_cache(self, cache_dir: Path) -> None:
        if self._font_tried:
            return
        self._font_tried = True  # one attempt per Sandbox: a failure must not slow every start
        found = _font_list_in(cache_dir)
        if found is None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import matplotlib.font_manager",
                env={**_minimal_env(), "MPLCONFIGDIR": str(cache_dir)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await asyncio.wait_for(proc.wait(), timeout=60)
            except TimeoutError:
                proc.kill()
                return
            found = _font_list_in(cache_dir)
        self._font_list = found


def _font_list_in(cache_dir: Path) -> Path | None:
    """matplotlib's font cache file (its name carries the matplotlib version)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("fontlist-v*.json"))
    return found[-1] if found else None


def _minimal_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tempfile.gettempdir()}


_OPT_OUT = (
    "To run sessions without any isolation instead (development only, unsafe), start the local pool "
    "with the explicit opt-in --unsafe-no-sandbox."
)


def _explain_failure(stderr: str) -> str:
    """Turn known bwrap failures into actionable advice."""
    detail = f"bubblewrap self-test failed: {stderr or 'no error output'}."
    if "uid map" in stderr or "RTM_NEWADDR" in stderr or "setting up" in stderr:
        advice = (
            "Unprivileged user namespaces are restricted (Ubuntu >= 23.10 AppArmor): install an AppArmor "
            "profile for /usr/bin/bwrap (Ubuntu 25.04 ships `bwrap-userns-restrict`) or run "
            "`sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`."
        )
    elif "No permissions to create new namespace" in stderr or "Operation not permitted" in stderr:
        advice = (
            "Namespaces are blocked, typically by a container's seccomp profile (Docker): run the "
            "container with `--security-opt seccomp=unconfined --security-opt apparmor=unconfined` "
            "(and possibly `--cap-add SYS_ADMIN`), or check `sysctl user.max_user_namespaces` > 0."
        )
    else:
        advice = "Check that `bwrap --unshare-all --ro-bind /usr /usr -- /usr/bin/true` works for this user."
    return f"{detail} {advice} {_OPT_OUT}"
