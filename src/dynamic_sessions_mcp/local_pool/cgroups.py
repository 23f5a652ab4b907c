"""Per-sandbox cgroups, v1 and v2 (and hybrid hosts): memory, pids and CPU limits, the OOM
counter, and teardown with cgroup.kill. Every operation is best effort: a host without writable
cgroups gets rlimits instead (see sandbox.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dynamic_sessions_mcp.local_pool.sandbox import Limits

logger = logging.getLogger(__name__)

_CGROUP_PARENT = "dsmcp"


@dataclass(frozen=True)
class CgroupLayout:
    """Where each controller lives on this host: v1 per-controller mounts and/or a v2 mount."""

    v1: Mapping[str, Path]  # controller -> mount point (memory, pids, cpu)
    v2: Path | None  # cgroup2 mount (unified), used for cgroup.kill and v2 controllers

    @classmethod
    def detect(cls) -> CgroupLayout:
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
    limited: set[str] = field(default_factory=set)  # controllers whose limit is in place

    @property
    def memory_limited(self) -> bool:
        return self.memory_dir is not None

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    @classmethod
    def create(cls, layout: CgroupLayout, name: str, limits: Limits) -> Cgroup:
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
            if d is not None and all(_write(d / f, v) for f, v in v1_writes[ctrl]):
                cg.limited.add(ctrl)
                if ctrl == "memory":
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
            self.limited.add("memory")
        if "pids" in wanted and _write(d / "pids.max", str(limits.pids_max)):
            self.limited.add("pids")
        if "cpu" in wanted and _write(d / "cpu.max", f"{quota} 100000"):
            self.limited.add("cpu")

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
