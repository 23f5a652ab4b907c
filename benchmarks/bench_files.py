"""Files through the bridge, 1 MiB and 100 MiB, up and down: throughput and the bridge's peak memory.

    .venv/bin/python benchmarks/bench_files.py [--big-mib 100] [--runs 3] [--quick] [--json out.json]

Every path goes through the real `python -m dynamic_sessions_mcp` in a subprocess, in front of the
local pool in its own subprocess (`dynamic_sessions_mcp local-pool`), so neither shares a process
(or its memory and CPU accounting) with the client:

- signed URL (HTTP, DSMCP_PUBLIC_URL set): `file_url` mints a PUT or GET URL and the bytes stream
  through the bridge's /files route. Timed: the PUT or GET alone.
- local_path (stdio, DSMCP_LOCAL_FILE_DIRS set): upload_file / download_file read or write a file on
  this machine. Timed: the tool call.
- base64 (HTTP and stdio): upload_file with base64 `content`, download_file answering with an
  embedded resource (inline only up to DSMCP_MAX_DOWNLOAD_BYTES, 10 MiB). Timed: the tool call;
  base64 encoding and decoding on the client are outside it.

Sizes are MiB (1 MiB = 1,048,576 bytes); throughput is MiB/s, the median of the runs. Memory: the
bridge's VmHWM after each transfer (peak reset through /proc/PID/clear_refs just before it) minus
its VmRSS before the group's first transfer; every group starts with an unrecorded 1 MiB round
trip, and the big files go through a fresh bridge. Target: <= 30 MB (28.6 MiB) growth for 100 MB.
Every upload is checked by sha256 inside the sandbox and every download against the source file:
a run that moves wrong bytes fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

from common import bridge_env, bridge_http, local_pool_process, status_kib

MIB = 1024 * 1024
TARGET_BYTES = 30_000_000  # the "30 MB"
SHA_IN_POOL = (
    "import hashlib\nh = hashlib.sha256()\nwith open({path!r}, 'rb') as f:\n"
    "    for b in iter(lambda: f.read(1 << 20), b''):\n        h.update(b)\nh.hexdigest()"
)

Transfer = Callable[[], Awaitable[float]]  # one upload or download; returns the timed seconds


# ------------------------------------------------------------------------------ processes
def stdio_bridge_pid() -> int:
    """The stdio bridge the MCP Client spawned: our child running exactly `-m dynamic_sessions_mcp`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and argv[1:] == [b"-m", b"dynamic_sessions_mcp"]:
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one stdio bridge child, found {found}")
    return found[0]


def reset_peak(pid: int) -> None:
    """Set the process's VmHWM to its current VmRSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    sha256: str


def make_source(directory: Path, name: str, size: int) -> Source:
    """A file of random bytes (so a misplaced chunk changes the hash)."""
    path = directory / f"{name}.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for start in range(0, size, MIB):
            block = os.urandom(min(MIB, size - start))
            digest.update(block)
            f.write(block)
    return Source(path, size, digest.hexdigest())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as f:
        while block := await f.read(MIB):
            yield block


def structured(result: CallToolResult) -> dict[str, Any]:
    if result.is_error or not isinstance(result.structured_content, dict):
        first = result.content[0] if result.content else None
        raise RuntimeError(f"tool call failed: {getattr(first, 'text', first)}")
    return result.structured_content


# ------------------------------------------------------------------------------ transfers
class Moves:
    """Uploads and downloads over one connected client, each checked by sha256."""

    def __init__(self, client: Client, handle: str, workdir: Path, http: httpx.AsyncClient | None) -> None:
        self.client = client
        self.handle = handle
        self.workdir = workdir
        self.http = http

    async def call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        return structured(await self.client.call_tool(tool, {**args, "session": self.handle}))

    async def check_in_pool(self, pool_path: str, source: Source) -> None:
        out = await self.call("run_python", {"code": SHA_IN_POOL.format(path=pool_path)})
        if out.get("result") != source.sha256:
            raise RuntimeError(
                f"{pool_path} in the sandbox has sha256 {out.get('result')}, sent {source.sha256}"
            )

    @staticmethod
    def check_received(what: str, size: int, sha256: str, source: Source) -> None:
        if size != source.size or sha256 != source.sha256:
            raise RuntimeError(
                f"{what}: got {size} bytes sha256 {sha256}, expected {source.size} {source.sha256}"
            )

    # signed URLs (HTTP)
    async def signed_up(self, pool_path: str, source: Source) -> float:
        assert self.http is not None
        url = (await self.call("file_url", {"path": pool_path, "direction": "upload"}))["url"]
        started = time.perf_counter()
        r = await self.http.put(
            url, content=file_chunks(source.path), headers={"Content-Length": str(source.size)}
        )
        elapsed = time.perf_counter() - started
        if r.status_code != 201 or r.json().get("size") != source.size:
            raise RuntimeError(f"signed PUT answered {r.status_code}: {r.text[:200]}")
        await self.check_in_pool(pool_path, source)
        return elapsed

    async def signed_down(self, pool_path: str, source: Source) -> float:
        assert self.http is not None
        url = (await self.call("file_url", {"path": pool_path}))["url"]
        digest, size = hashlib.sha256(), 0
        started = time.perf_counter()
        async with self.http.stream("GET", url) as r:
            if r.status_code != 200:
                raise RuntimeError(f"signed GET answered {r.status_code}")
            async for chunk in r.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
        elapsed = time.perf_counter() - started
        self.check_received("signed GET", size, digest.hexdigest(), source)
        return elapsed

    # local paths (stdio)
    async def upload(self, pool_path: str, source: Source, how: str, args: dict[str, str]) -> float:
        """Timed upload_file with `args`; then the size it reports and the bytes in the pool are checked."""
        started = time.perf_counter()
        out = await self.call("upload_file", {"path": pool_path, **args})
        elapsed = time.perf_counter() - started
        if out["size"] != source.size:
            raise RuntimeError(f"upload_file({how}) wrote {out['size']} bytes, not {source.size}")
        await self.check_in_pool(pool_path, source)
        return elapsed

    async def local_up(self, pool_path: str, source: Source) -> float:
        return await self.upload(pool_path, source, "local_path", {"local_path": str(source.path)})

    async def local_down(self, pool_path: str, source: Source) -> float:
        target = self.workdir / "received.bin"
        started = time.perf_counter()
        await self.call("download_file", {"path": pool_path, "local_path": str(target)})
        elapsed = time.perf_counter() - started
        self.check_received("download_file(local_path)", target.stat().st_size, file_sha256(target), source)
        target.unlink()
        return elapsed

    # base64 content / embedded resource (both transports)
    async def base64_up(self, pool_path: str, source: Source) -> float:
        content = base64.b64encode(source.path.read_bytes()).decode()
        return await self.upload(pool_path, source, "base64", {"content": content, "encoding": "base64"})

    async def base64_down(self, pool_path: str, source: Source) -> float:
        started = time.perf_counter()
        result = await self.client.call_tool("download_file", {"path": pool_path, "session": self.handle})
        elapsed = time.perf_counter() - started
        structured(result)
        blobs = [
            c.resource.blob for c in result.content if c.type == "resource" and hasattr(c.resource, "blob")
        ]
        if len(blobs) != 1:
            raise RuntimeError("download_file attached no embedded binary resource")
        data = base64.b64decode(blobs[0])
        self.check_received("download_file(base64)", len(data), hashlib.sha256(data).hexdigest(), source)
        return elapsed


Mover = Callable[[str, Source], Awaitable[float]]


@dataclass
class Group:
    """One path at one size: timings and the bridge's peak growth per direction."""

    path: str
    size: int
    up_s: list[float] = field(default_factory=list)
    down_s: list[float] = field(default_factory=list)
    baseline_kib: int = 0
    up_peak_kib: int = 0
    down_peak_kib: int = 0
    rss_after_kib: int = 0

    def rate(self, samples: list[float]) -> float:
        return round(self.size / MIB / statistics.median(samples), 1)

    def growth_mib(self, peak_kib: int) -> float:
        return round((peak_kib - self.baseline_kib) / 1024, 1)

    @property
    def worst_growth_bytes(self) -> int:
        return (max(self.up_peak_kib, self.down_peak_kib) - self.baseline_kib) * 1024

    def report(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_mib": self.size / MIB,
            "runs": len(self.up_s),
            "up_mib_s": self.rate(self.up_s),
            "down_mib_s": self.rate(self.down_s),
            "up_s": [round(s, 4) for s in self.up_s],
            "down_s": [round(s, 4) for s in self.down_s],
            "bridge_rss_before_mib": round(self.baseline_kib / 1024, 1),
            "peak_growth_up_mib": self.growth_mib(self.up_peak_kib),
            "peak_growth_down_mib": self.growth_mib(self.down_peak_kib),
            "rss_growth_after_mib": self.growth_mib(self.rss_after_kib),
        }


async def measure(
    name: str, pid: int, up: Mover, down: Mover, source: Source, warmup: Source, runs: int
) -> Group:
    """An unrecorded `warmup` round trip, then `runs` round trips of `source`, with peak memory."""
    pool_path = f"bench/{name.split()[0]}-{source.size}.bin"
    await up(pool_path, warmup)
    await down(pool_path, warmup)
    group = Group(name, source.size, baseline_kib=status_kib(pid, "VmRSS"))
    for _ in range(runs):
        reset_peak(pid)
        group.up_s.append(await up(pool_path, source))
        group.up_peak_kib = max(group.up_peak_kib, status_kib(pid, "VmHWM"))
        reset_peak(pid)
        group.down_s.append(await down(pool_path, source))
        group.down_peak_kib = max(group.down_peak_kib, status_kib(pid, "VmHWM"))
    group.rss_after_kib = status_kib(pid, "VmRSS")
    print(f"  {name} {source.size / MIB:g} MiB: done", file=sys.stderr)
    return group


@dataclass(frozen=True)
class Plan:
    small: Source
    big: Source
    base64_large: Source | None  # near the inline limit: how base64 scales
    small_runs: int
    big_runs: int


async def over_http(pool_url: str, workdir: Path, plan: Plan, big: bool) -> list[Group]:
    """A fresh HTTP bridge: the small groups (signed URL, base64), or the big signed-URL group."""
    with bridge_http(bridge_env(pool_url), public_url=True) as (url, pid):
        async with Client(url) as client, httpx.AsyncClient(timeout=600) as http:
            handle = structured(await client.call_tool("new_session", {}))["session"]
            moves = Moves(client, handle, workdir, http)
            if big:
                groups = [
                    await measure(
                        "signed URL (HTTP)",
                        pid,
                        moves.signed_up,
                        moves.signed_down,
                        plan.big,
                        plan.small,
                        plan.big_runs,
                    )
                ]
            else:
                signed = (moves.signed_up, moves.signed_down)
                b64 = (moves.base64_up, moves.base64_down)
                groups = [
                    await measure("signed URL (HTTP)", pid, *signed, plan.small, plan.small, plan.small_runs),
                    await measure("base64 (HTTP)", pid, *b64, plan.small, plan.small, plan.small_runs),
                ]
                if plan.base64_large is not None:
                    groups.append(
                        await measure(
                            "base64 (HTTP)", pid, *b64, plan.base64_large, plan.small, plan.big_runs
                        )
                    )
            await client.call_tool("end_session", {"session": handle})
    return groups


async def over_stdio(pool_url: str, workdir: Path, plan: Plan, big: bool) -> list[Group]:
    """A fresh stdio bridge (spawned by the Client): the small groups (local_path, base64), or the big one."""
    env = bridge_env(pool_url, DSMCP_LOCAL_FILE_DIRS=str(workdir))
    params = StdioServerParameters(command=sys.executable, args=["-m", "dynamic_sessions_mcp"], env=env)
    async with Client(params, mode="legacy") as client:
        pid = stdio_bridge_pid()
        handle = structured(await client.call_tool("new_session", {}))["session"]
        moves = Moves(client, handle, workdir, None)
        local = (moves.local_up, moves.local_down)
        if big:
            groups = [await measure("local_path (stdio)", pid, *local, plan.big, plan.small, plan.big_runs)]
        else:
            groups = [
                await measure("local_path (stdio)", pid, *local, plan.small, plan.small, plan.small_runs),
                await measure(
                    "base64 (stdio)",
                    pid,
                    moves.base64_up,
                    moves.base64_down,
                    plan.small,
                    plan.small,
                    plan.small_runs,
                ),
            ]
        await client.call_tool("end_session", {"session": handle})
    return groups


async def run_all(pool_url: str, workdir: Path, plan: Plan) -> list[Group]:
    groups: list[Group] = []
    for transport in (over_http, over_stdio):
        for big in (False, True):
            groups += await transport(pool_url, workdir, plan, big)
    return groups


# ------------------------------------------------------------------------------ report
def print_table(groups: list[Group], big_size: int) -> bool:
    bound_mib = TARGET_BYTES / MIB
    print(
        f"{'path':20} {'size':>8} {'up MiB/s':>9} {'down MiB/s':>10} {'peak growth up/down':>20} "
        f"{'x size':>7}  target"
    )
    all_ok = True
    for g in groups:
        row = g.report()
        worst = g.worst_growth_bytes
        verdict = ""
        if g.size == big_size and not g.path.startswith("base64"):
            ok = worst <= TARGET_BYTES
            all_ok &= ok
            verdict = f"<= {bound_mib:.1f} MiB: {'ok' if ok else 'MISSED'}"
        growth = f"{row['peak_growth_up_mib']} / {row['peak_growth_down_mib']} MiB"
        print(
            f"{g.path:20} {g.size / MIB:>4g} MiB {row['up_mib_s']:>9} {row['down_mib_s']:>10} {growth:>20} "
            f"{worst / g.size:>7.2f}  {verdict}"
        )
    return all_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big-mib", type=int, default=100, help="size of the big file (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="round trips of the big file per path")
    parser.add_argument("--small-runs", type=int, default=5, help="round trips of the 1 MiB file per path")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 16 MiB big file, 1-2 runs, no 8 MiB base64"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.big_mib, args.runs, args.small_runs = 16, 1, 2
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        workdir = Path(tmp)
        plan = Plan(
            small=make_source(workdir, "small", MIB),
            big=make_source(workdir, "big", args.big_mib * MIB),
            base64_large=None if args.quick else make_source(workdir, "base64-large", 8 * MIB),
            small_runs=args.small_runs,
            big_runs=args.runs,
        )
        with local_pool_process(DSMCP_LOCAL_WARM_SESSIONS="1", DSMCP_LOCAL_MAX_SESSIONS="10") as (
            pool_url,
            _,
        ):
            groups = anyio.run(run_all, pool_url, workdir, plan)
    all_ok = print_table(groups, plan.big.size)
    print(
        "peak growth: bridge VmHWM during a transfer minus its VmRSS before the group; "
        "x size = worst growth / file size. base64 moves 4/3 of the bytes on the wire."
    )
    if args.json:
        report = {
            "units": "MiB; MiB/s (median)",
            "target_growth_bytes": TARGET_BYTES,
            "target_ok": all_ok,
            "groups": [g.report() for g in groups],
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
