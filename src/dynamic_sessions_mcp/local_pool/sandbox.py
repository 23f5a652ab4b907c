"""Isolation for the local pool: one of three tiers, plus cgroup and rlimit resource limits.

- **bubblewrap** (tier A): each sandboxed process sees only /usr, the Python runtime (read-only),
  a private /tmp and its session directory at /mnt/data, with an empty network namespace, a
  non-root uid and the seccomp filter of `seccomp.py`. See shared/reference/local-sandbox.md §7.
- **landlock** (tier B, no namespaces): see `confinement.py`. The session directory is the
  working directory at its host path; `/mnt/data` does not exist, so code uses relative paths.
- **none** (tier C): explicit opt-in only; rlimits, cgroups and timeouts, nothing else.

The tier is chosen once by `self_test` (from the `isolation` setting: auto, bubblewrap, landlock
or none) and reported by `isolation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_sessions_mcp.local_pool import confinement, landlock, seccomp
from dynamic_sessions_mcp.local_pool.cgroups import Cgroup, CgroupLayout
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig
from dynamic_sessions_mcp.local_pool.tiers import (
    ISOLATION_CHOICES,
    OPT_OUT,
    NamespacesUnavailable,
    SandboxUnavailable,
    Tier,
    bwrap_missing,
    explain_bwrap_failure,
    explain_landlock_failure,
)

__all__ = ["Limits", "Sandbox", "SandboxProcess", "SandboxUnavailable", "Tier"]

logger = logging.getLogger(__name__)

SANDBOX_DATA_DIR = "/mnt/data"
SANDBOX_UID = 1000
_SANDBOX_TMP = "/tmp"  # noqa: S108 - the sandbox's private tmpfs, not the host's /tmp
_SANDBOX_MPL = f"{_SANDBOX_TMP}/mpl"
_PASSWD = f"user:x:{SANDBOX_UID}:{SANDBOX_UID}:user:/tmp:/bin/bash\n".encode()
_GROUP = f"user:x:{SANDBOX_UID}:\n".encode()
_HOSTS = b"127.0.0.1 localhost sandbox\n::1 localhost\n"
_SELF_TEST_TIMEOUT_S = 20.0
_KILL_WAIT_S = 5.0
# Tier B's self-test: Python starts under the confinement, and Landlock really denies a file
# outside the allowlist (exit 0 only if the read is refused).
_LANDLOCK_PROBE = (
    "import sys\ntry:\n    open(sys.argv[1]).read()\nexcept PermissionError:\n    sys.exit(0)\n"
    "sys.exit('a file outside the allowlist was readable')"
)


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


@dataclass
class SandboxProcess:
    """A running sandboxed process tree and the cgroup holding it."""

    process: asyncio.subprocess.Process
    cgroup: Cgroup
    # Without a PID namespace (tiers B and C): the uid whose processes in this sandbox's session
    # are killed with it, and the private dir removed after it.
    session_uid: int | None = None
    private_dir: Path | None = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        """Kill the whole tree: cgroup.kill when available; SIGKILL of the leader (bwrap, whose
        --die-with-parent and PID namespace take every descendant down); without namespaces,
        every process of its session. Never hangs."""
        self.cgroup.kill()
        if self.process.returncode is None:
            # os.kill, not send_signal: that polls the Popen, and reaping the child there (cgroup.kill
            # may have killed it already) leaves asyncio's watcher to log "Unknown child process".
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        if self.session_uid is not None:
            await asyncio.to_thread(confinement.kill_session, self.process.pid, self.session_uid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), timeout=_KILL_WAIT_S)
        await self.cgroup.remove()
        if self.private_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self.private_dir, True)


def _data_fd(content: bytes) -> int:
    fd = os.memfd_create("dsmcp", 0)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# The server's interpreter without `..` (a relative start like `../.venv/bin/python` names a path
# that does not exist inside the sandbox); symlinks stay, since the venv's python is one.
PYTHON = os.path.abspath(sys.executable)


def _runtime_prefixes() -> list[str]:
    """Directories holding the interpreter and its packages (venv and base install)."""
    prefixes: list[str] = []
    for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(PYTHON))):
        real = os.path.realpath(p)
        for candidate in (p, real):
            if candidate.startswith("/usr/") or candidate == "/usr":
                continue
            if not any(candidate == q or candidate.startswith(q + "/") for q in prefixes):
                prefixes.append(candidate)
    return prefixes


@dataclass
class _Launch:
    """How to start one command in the chosen tier."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    fds: list[int] = field(default_factory=list)
    confine: confinement.Confinement | None = None
    session_uid: int | None = None
    private_dir: Path | None = None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if self.confine is not None:
            self.confine.close()


class Sandbox:
    """Launches processes for one pool, each confined to its session directory."""

    def __init__(
        self,
        limits: Limits,
        *,
        isolation: str = "auto",
        unsafe_no_sandbox: bool = False,
        bwrap_path: str | None = None,
        mpl_cache_dir: Path | None = None,
        use_cgroups: bool = True,
    ) -> None:
        """`use_cgroups=False` applies rlimits only, as on hosts whose cgroups are not writable."""
        if isolation not in ISOLATION_CHOICES:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATION_CHOICES)}, not {isolation!r}")
        self.limits = limits
        self.requested = "none" if unsafe_no_sandbox else isolation
        self.unsafe_no_sandbox = self.requested == "none"
        self._tier: Tier | None = None
        self._bwrap = bwrap_path if bwrap_path is not None else (shutil.which("bwrap") or "bwrap")
        self._layout = CgroupLayout.detect() if use_cgroups else CgroupLayout({}, None)
        self._is_root = os.geteuid() == 0
        self._has_inline_backend = importlib.util.find_spec("matplotlib_inline") is not None
        self._mpl_cache_dir = mpl_cache_dir
        self._font_list: Path | None = None
        self._font_tried = False
        self._font_lock = asyncio.Lock()
        self._filters: dict[seccomp.Profile, bytes] = {}
        self._landlock_abi = 0
        self._runtime_dir: Path | None = None  # tier B: parent of the per-sandbox private dirs

    @property
    def tier(self) -> Tier | None:
        """The tier the self-test chose; None before it ran."""
        return self._tier

    @property
    def isolation(self) -> str:
        """The tier in use ("bubblewrap", "landlock", "none"), or what was asked for before the self-test."""
        return self._tier.value if self._tier is not None else self.requested

    @property
    def python(self) -> str:
        """The interpreter sandboxed Python processes run (the server's own, at its host path)."""
        return PYTHON

    # ------------------------------------------------------------------ self-test

    def self_test(self) -> None:
        """Choose the tier: run the requested one's self-test (auto: bubblewrap, falling back to
        Landlock when bubblewrap cannot create namespaces); raise SandboxUnavailable with advice."""
        if self.requested == "none":  # the explicit opt-in; the registry warns loudly about it
            self._choose(Tier.NONE)
            return
        try:
            tier = self._select()
        except SandboxUnavailable as exc:
            raise SandboxUnavailable(f"{exc} {OPT_OUT}") from exc
        self._choose(tier)

    def _select(self) -> Tier:
        if self.requested == "landlock":
            self._test_landlock()
            return Tier.LANDLOCK
        try:
            self._test_bwrap()
        except NamespacesUnavailable as exc:
            if self.requested == "bubblewrap":
                raise
            try:
                self._test_landlock()
            except SandboxUnavailable as landlock_exc:
                raise SandboxUnavailable(f"{exc} Also, {landlock_exc}") from exc
            logger.warning("%s Falling back to the Landlock tier (weaker: no namespaces).", exc)
            return Tier.LANDLOCK
        return Tier.BUBBLEWRAP

    def _choose(self, tier: Tier) -> None:
        self._tier = tier
        if tier is Tier.LANDLOCK:
            missing = []
            if self._landlock_abi < 4:
                missing.append("TCP rules (seccomp still denies inet sockets)")
            if self._landlock_abi < 6:
                missing.append("signal scoping (code can signal processes of its uid)")
            logger.info(
                "isolation tier: landlock (ABI %d, sandbox uid %d)%s",
                self._landlock_abi,
                confinement.sandbox_uid(),
                f"; missing on this kernel: {', '.join(missing)}" if missing else "",
            )
        else:
            logger.info("isolation tier: %s", tier.value)

    def _filter(self, profile: seccomp.Profile) -> bytes:
        if profile not in self._filters:
            old_landlock = profile is seccomp.Profile.NO_NAMESPACES and self._landlock_abi < 3
            try:
                self._filters[profile] = seccomp.build(profile, deny_path_truncate=old_landlock)
            except seccomp.UnsupportedArch as exc:
                raise SandboxUnavailable(str(exc)) from exc
        return self._filters[profile]

    def _test_bwrap(self) -> None:
        if shutil.which(self._bwrap) is None:
            raise SandboxUnavailable(bwrap_missing(self._bwrap))
        with tempfile.TemporaryDirectory(prefix="dsmcp-selftest-") as tmp:
            launch = self._bwrap_launch(Path(tmp), ["/bin/true"], rw_binds=())
            try:
                proc = subprocess.run(
                    launch.argv,
                    pass_fds=launch.fds,
                    env=launch.env,
                    capture_output=True,
                    timeout=_SELF_TEST_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxUnavailable(f"bubblewrap could not be run: {exc}.") from exc
            finally:
                launch.close()
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip()
            raise NamespacesUnavailable(explain_bwrap_failure(stderr))

    def _test_landlock(self) -> None:
        abi = landlock.abi_version()
        if abi < 1:
            raise SandboxUnavailable(explain_landlock_failure("the kernel reports no Landlock ABI"))
        self._landlock_abi = abi
        with tempfile.TemporaryDirectory(prefix="dsmcp-selftest-") as tmp:
            session = Path(tmp) / "session"
            session.mkdir()
            outside = Path(tmp) / "outside.txt"
            outside.write_text("must stay unreadable")
            outside.chmod(0o644)
            try:
                launch = self._landlock_launch(session, [PYTHON, "-c", _LANDLOCK_PROBE, str(outside)], ())
            except (OSError, SandboxUnavailable) as exc:
                raise SandboxUnavailable(explain_landlock_failure(str(exc))) from exc
            assert launch.confine is not None
            try:
                proc = subprocess.run(
                    launch.argv,
                    cwd=launch.cwd,
                    env=launch.env,
                    preexec_fn=launch.confine.apply,
                    start_new_session=True,
                    capture_output=True,
                    timeout=_SELF_TEST_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxUnavailable(explain_landlock_failure(str(exc))) from exc
            finally:
                launch.close()
                if launch.private_dir is not None:
                    shutil.rmtree(launch.private_dir, ignore_errors=True)
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip() or f"exit code {proc.returncode}"
            raise SandboxUnavailable(explain_landlock_failure(detail))

    # ------------------------------------------------------------------ spawning

    def _env(self, *, home: str, mpl_dir: str) -> dict[str, str]:
        threads = str(self.limits.threads)
        env = {
            "PATH": f"{os.path.dirname(PYTHON)}:/usr/local/bin:/usr/bin:/bin",
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

    def _bwrap_launch(
        self, session_dir: Path, command: Sequence[str], *, rw_binds: Sequence[Path]
    ) -> _Launch:
        """The bwrap command line of §7.2 and the fds it reads (--ro-bind-data, --seccomp)."""
        program = self._filter(seccomp.Profile.NAMESPACES)
        fds = [_data_fd(_PASSWD), _data_fd(_GROUP), _data_fd(_HOSTS), _data_fd(program)]
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
        argv += ["--seccomp", str(fds[3]), "--", *command]
        return _Launch(argv, {"PATH": "/usr/bin:/bin"}, fds=fds)

    def _private_root(self) -> Path:
        if self._runtime_dir is None:
            self._runtime_dir = Path(tempfile.mkdtemp(prefix="dsmcp-rt-"))
            # Traversable, not listable: access(2) checks paths without capabilities, and each
            # private dir inside is owned by the sandbox user and confined by Landlock.
            self._runtime_dir.chmod(0o711)
            weakref.finalize(self, shutil.rmtree, self._runtime_dir, True)
        return self._runtime_dir

    def _landlock_launch(
        self, session_dir: Path, command: Sequence[str], rw_binds: Sequence[Path]
    ) -> _Launch:
        """Tier B: the command itself, confined in the child by `confinement.Confinement.apply`."""
        private = self._private_root() / f"t-{secrets.token_hex(8)}"
        private.mkdir(mode=0o700)
        mpl = private / "mpl"
        mpl.mkdir()
        if self._font_list is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(self._font_list, mpl / self._font_list.name)
        try:
            confine = confinement.prepare(
                self._landlock_abi,
                self._filter(seccomp.Profile.NO_NAMESPACES),
                session_dir=session_dir,
                private_dir=private,
                runtime_prefixes=_runtime_prefixes(),
                rw_paths=rw_binds,
            )
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        env = self._env(home=str(private), mpl_dir=str(mpl))
        env["TMPDIR"] = str(private)
        return _Launch(
            list(command),
            env,
            cwd=str(session_dir),
            confine=confine,
            session_uid=confinement.sandbox_uid(),
            private_dir=private,
        )

    def _unconfined_launch(self, session_dir: Path, command: Sequence[str]) -> _Launch:
        tmp = tempfile.gettempdir()
        env = self._env(home=tmp, mpl_dir=f"{tmp}/dsmcp-mpl-{os.getuid()}")
        return _Launch(list(command), env, cwd=str(session_dir), session_uid=os.geteuid())

    def _rlimits(self, cgroup: Cgroup, tier: Tier) -> list[tuple[int, int]]:
        limits = self.limits
        rlimits: list[tuple[int, int]] = [
            (resource.RLIMIT_NOFILE, limits.nofile),
            (resource.RLIMIT_FSIZE, limits.fsize_bytes),
            (resource.RLIMIT_CORE, 0),
        ]
        if not cgroup.memory_limited:
            rlimits.append((resource.RLIMIT_AS, 2 * limits.memory_mb * 1024 * 1024))
        if "pids" not in cgroup.limited:
            # RLIMIT_NPROC counts threads per user namespace in tier A (a per-sandbox limit), but per
            # real uid without namespaces, where that uid's other processes count too. Root is exempt.
            uid = confinement.sandbox_uid() if tier is Tier.LANDLOCK else os.geteuid()
            if tier is Tier.BUBBLEWRAP and not self._is_root:
                rlimits.append((resource.RLIMIT_NPROC, limits.pids_max))
            elif tier is not Tier.BUBBLEWRAP and uid != 0:
                rlimits.append((resource.RLIMIT_NPROC, confinement.tasks_of(uid) + limits.pids_max))
        return rlimits

    def _preexec(
        self, cgroup: Cgroup, tier: Tier, confine: confinement.Confinement | None
    ) -> tuple[Callable[[], None], list[int]]:
        """Runs in the child between fork and exec: join the cgroups, set rlimits, then (tier B)
        confine, so the command and every descendant start inside the limits. Everything is
        prepared here, before the fork."""
        procs_fds = []
        for f in cgroup.procs_files:
            try:
                procs_fds.append(os.open(f, os.O_WRONLY | os.O_CLOEXEC))
            except OSError as exc:
                logger.debug("cannot open %s: %s", f, exc)
        rlimits = self._rlimits(cgroup, tier)

        def preexec() -> None:
            for fd in procs_fds:
                with contextlib.suppress(OSError):
                    os.write(fd, b"0")
            for which, value in rlimits:
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(which, (value, value))
            if confine is not None:
                confine.apply()  # raises on failure: the command never runs unconfined

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
        if self._tier is None:
            await asyncio.to_thread(self.self_test)
        tier = self._tier
        assert tier is not None
        cgroup = Cgroup.create(self._layout, name, self.limits)
        procs_fds: list[int] = []
        launch: _Launch | None = None
        try:
            if tier is Tier.BUBBLEWRAP:
                launch = self._bwrap_launch(session_dir, command, rw_binds=rw_binds)
            elif tier is Tier.LANDLOCK:
                launch = await asyncio.to_thread(self._landlock_launch, session_dir, command, rw_binds)
            else:
                launch = self._unconfined_launch(session_dir, command)
            preexec, procs_fds = self._preexec(cgroup, tier, launch.confine)
            process = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=launch.fds,
                cwd=launch.cwd,
                env=launch.env,
                preexec_fn=preexec,
                start_new_session=True,
            )
        except BaseException:
            await cgroup.remove()
            if launch is not None and launch.private_dir is not None:
                shutil.rmtree(launch.private_dir, ignore_errors=True)
            raise
        finally:
            for fd in procs_fds:
                os.close(fd)
            if launch is not None:
                launch.close()
        return SandboxProcess(process, cgroup, launch.session_uid, launch.private_dir)

    async def hand_over(self, session_dir: Path) -> None:
        """Before code runs: give entries the server created in the session dir (uploads) to the
        sandbox user, when that is another uid (tier B under a root server)."""
        uid = confinement.sandbox_uid()
        if self._tier is Tier.LANDLOCK and uid != os.geteuid():
            await asyncio.to_thread(confinement.adopt, session_dir, uid)

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
                PYTHON,
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
