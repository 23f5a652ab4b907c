"""Benchmark the local session pool over HTTP, the way the bridge uses it.

    .venv/bin/python benchmarks/bench_local_pool.py [--n 50] [--json out.json]

Measures: a new identifier's first `6*7` (warm pool; paced so the pool is refilled before each
sample), a warm `6*7` in a live session, a cold sandbox start (pool without warm kernels), and the
idle memory of a session's kernel process tree (RSS and PSS from /proc, bare and with the data
stack imported). Targets: first call p50 <= 25 ms, warm execute p50 <= 10 ms, cold start <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from common import descendants, percentile, process_table, rss_pss_kib
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig
from dynamic_sessions_mcp.local_pool.runner import running

VERSION = "2025-10-02-preview"
TOKEN = "bench-token"
TARGETS_MS = {"first_call": 25.0, "warm_execute": 10.0, "cold_start": 1000.0}


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p95": round(percentile(values, 0.95), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


class Pool:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def execute(self, identifier: str, code: str) -> float:
        """Milliseconds for one synchronous execution, checked for the right answer."""
        started = time.perf_counter()
        r = await self.client.post(
            "executions", params={"api-version": VERSION, "identifier": identifier}, json={"code": code}
        )
        elapsed = (time.perf_counter() - started) * 1000
        r.raise_for_status()
        body = r.json()
        if body["status"] != "Succeeded":
            raise RuntimeError(f"execution failed: {body}")
        return elapsed

    async def end(self, identifier: str) -> None:
        await self.client.delete("session", params={"api-version": VERSION, "identifier": identifier})

    async def wait_ready(self, want: int, timeout_s: float = 60.0) -> None:
        """Pace: wait until the warm pool holds `want` kernels again."""
        deadline = time.monotonic() + timeout_s
        while True:
            r = await self.client.get("metadata", params={"api-version": VERSION})
            if r.json()["readySessions"] >= want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the warm pool did not refill")
            await asyncio.sleep(0.05)


def sandbox_trees() -> list[tuple[int, int]]:
    """(RSS, PSS) KiB of every sandbox this process started (bwrap and everything under it)."""
    table = process_table()
    result = []
    for root in (pid for pid, (ppid, _) in table.items() if ppid == os.getpid()):
        memory = [rss_pss_kib(pid) for pid in (root, *descendants(root, table))]
        result.append((sum(m[0] for m in memory), sum(m[1] for m in memory)))
    return result


def memory_row(trees: list[tuple[int, int]]) -> dict[str, float]:
    return {
        "sandboxes": len(trees),
        "rss_mib": round(statistics.median(t[0] for t in trees) / 1024, 1),
        "pss_mib": round(statistics.median(t[1] for t in trees) / 1024, 1),
        # Idle sandboxes one GiB of memory holds, by PSS (shared pages counted once across them).
        "sandboxes_per_gib": int(1024 * 1024 / statistics.median(t[1] for t in trees)),
    }


def config(warm: int, data_dir: Path | None) -> LocalPoolConfig:
    return LocalPoolConfig(token=TOKEN, warm_sessions=warm, max_sessions=200, data_dir=data_dir)


async def bench(n: int, n_cold: int, n_memory: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with running(config(2, None)) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        pool = Pool(client)
        await pool.execute("bench-warmup", "1")  # connection set up, first-request costs paid
        await pool.end("bench-warmup")

        first = []
        for _ in range(n):
            await pool.wait_ready(2)
            identifier = f"bench-{uuid.uuid4()}"
            first.append(await pool.execute(identifier, "6*7"))
            await pool.end(identifier)
        results["first_call_ms"] = summary(first)

        identifier = f"bench-{uuid.uuid4()}"
        await pool.execute(identifier, "6*7")
        await asyncio.sleep(0.5)
        await pool.wait_ready(2)  # no kernel start competing for the CPU
        results["warm_execute_ms"] = summary([await pool.execute(identifier, "6*7") for _ in range(n)])
        await pool.end(identifier)

        await pool.wait_ready(2)
        live = [f"bench-mem-{i}" for i in range(n_memory)]
        for identifier in live:
            await pool.execute(identifier, "6*7")
            await pool.wait_ready(2)
        await asyncio.sleep(1.0)
        results["idle_memory_bare"] = memory_row(sandbox_trees())
        for identifier in live:
            await pool.execute(identifier, "import numpy, pandas, matplotlib.pyplot")
        await asyncio.sleep(1.0)
        # Only the live sessions imported the data stack: measure those (the largest trees).
        trees = sorted(sandbox_trees(), key=lambda t: t[1])[-n_memory:]
        results["idle_memory_data_stack"] = memory_row(trees)

    async with running(config(0, None)) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        pool = Pool(client)
        cold = []
        for _ in range(n_cold):
            identifier = f"bench-{uuid.uuid4()}"
            cold.append(await pool.execute(identifier, "6*7"))
            await pool.end(identifier)
        results["cold_start_ms"] = summary(cold)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{'measure':<28}{'p50':>10}{'p95':>10}{'target p50':>12}", "-" * 60]
    for key, target in (
        ("first_call_ms", "first_call"),
        ("warm_execute_ms", "warm_execute"),
        ("cold_start_ms", "cold_start"),
    ):
        row = results[key]
        verdict = "ok" if row["p50"] <= TARGETS_MS[target] else "MISSED"
        lines.append(f"{key:<28}{row['p50']:>10.1f}{row['p95']:>10.1f}{TARGETS_MS[target]:>9.0f} {verdict}")
    for key in ("idle_memory_bare", "idle_memory_data_stack"):
        row = results[key]
        lines.append(
            f"{key:<28}RSS {row['rss_mib']:.1f} MiB, PSS {row['pss_mib']:.1f} MiB per session: "
            f"{row['sandboxes_per_gib']} sandboxes per GiB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=50, help="samples per latency measure")
    parser.add_argument("--cold", type=int, default=10, help="cold-start samples")
    parser.add_argument("--memory", type=int, default=4, help="live sessions measured for memory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few samples")
    args = parser.parse_args()
    if args.quick:
        args.n, args.cold, args.memory = 10, 3, 2
    results = asyncio.run(bench(args.n, args.cold, args.memory))
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
