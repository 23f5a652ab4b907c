"""What every benchmark needs: percentiles, process memory and CPU from /proc, servers in subprocesses.

Servers run in their own processes (the real `dynamic-sessions-mcp` command where possible), so a
benchmark's clients never share a GIL with what they measure, and /proc gives the server's own
memory and CPU.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `tests.support` (fault pool, local pool in a thread, free_port)
    sys.path.insert(0, str(ROOT))

from tests.support.serve import free_port  # noqa: E402

POOL_TOKEN = "bench-token"
API_VERSION = "2025-10-02-preview"
SESSION_SECRET = "bench-session-secret-0123456789abcdef"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    """p50/p95 in milliseconds of samples taken in seconds."""
    ms = [s * 1000 for s in samples_s]
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(percentile(ms, 0.95), 3), "n": len(ms)}


def status_kib(pid: int, field: str) -> int:
    """A KiB field of /proc/PID/status: VmRSS (now) or VmHWM (peak since start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process now."""
    table: dict[int, tuple[int, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        table[int(proc.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), comm)
    return table


def descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    """Every process below `root` (not `root` itself)."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _comm) in table.items():
        children[ppid].append(pid)
    out, stack = [], list(children[root])
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children[pid])
    return out


def rss_pss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB, from smaps_rollup; (0, 0) once it is gone."""
    values = {"Rss:": 0, "Pss:": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, *rest = line.split()
            if key in values:
                values[key] = int(rest[0])
    return values["Rss:"], values["Pss:"]


def wait_healthy(url: str, timeout_s: float = 60.0, headers: Mapping[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout_s:.0f} s")


def bridge_env(pool_url: str, **extra: str) -> dict[str, str]:
    """Environment for a bridge in front of `pool_url` (a REST pool taking POOL_TOKEN)."""
    return {
        **os.environ,
        "DSMCP_POOL_ENDPOINT": pool_url,
        "DSMCP_POOL_AUTH": "token",
        "DSMCP_POOL_TOKEN": POOL_TOKEN,
        "DSMCP_POOL_TYPE": "python",
        "DSMCP_SESSION_SECRET": SESSION_SECRET,
        "DSMCP_LOG_LEVEL": "WARNING",
        **extra,
    }


@contextmanager
def subprocess_server(
    argv: list[str],
    health_url: str,
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    stderr: IO[bytes] | None = None,
) -> Iterator[int]:
    """Start a server process, wait for `health_url`, yield its pid; terminate it afterwards."""
    proc = subprocess.Popen(argv, env=dict(env) if env is not None else None, stderr=stderr)
    try:
        wait_healthy(health_url, headers=headers)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def local_pool_process(log: IO[bytes] | None = None, **settings: str) -> Iterator[tuple[str, int]]:
    """`dynamic-sessions-mcp local-pool` (token POOL_TOKEN) in its own process: yield (URL, pid).

    `settings` adds to the environment, e.g. DSMCP_LOCAL_MAX_SESSIONS="250"; `log` takes its stderr.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "dynamic_sessions_mcp", "local-pool", "--port", str(port)]
    env = {**os.environ, "DSMCP_LOG_LEVEL": "WARNING", **settings}
    health = f"{url}/metadata?api-version={API_VERSION}"
    auth = {"Authorization": f"Bearer {POOL_TOKEN}"}
    with subprocess_server([*argv, "--token", POOL_TOKEN], health, env, auth, log) as pid:
        yield url, pid


@contextmanager
def bridge_http(
    env: Mapping[str, str], extra_args: tuple[str, ...] = (), *, noop: bool = False, public_url: bool = False
) -> Iterator[tuple[str, int]]:
    """The real `dynamic-sessions-mcp --transport http` on a free port: yield (MCP URL, pid).

    With `noop`, the same server plus a no-op tool, the protocol floor (benchmarks/noop_bridge.py).
    With `public_url`, DSMCP_PUBLIC_URL is the server's own address (signed file URLs).
    """
    port = free_port()
    program = [str(ROOT / "benchmarks" / "noop_bridge.py")] if noop else ["-m", "dynamic_sessions_mcp"]
    argv = [sys.executable, *program, "--transport", "http", "--port", str(port), *extra_args]
    base = f"http://127.0.0.1:{port}"
    if public_url:
        env = {**env, "DSMCP_PUBLIC_URL": base}
    with subprocess_server(argv, base + "/healthz", env) as pid:
        yield base + "/mcp", pid


@contextmanager
def instant_pool() -> Iterator[str]:
    """The fault pool with no faults, answering at once, in its own process: yield its URL."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "benchmarks" / "instant_pool.py"), str(port)]
    url = f"http://127.0.0.1:{port}"
    with subprocess_server(argv, url + "/metadata"):
        yield url
