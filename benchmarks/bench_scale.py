"""Throughput and scale of the HTTP bridge against a pool that answers at once.

    .venv/bin/python benchmarks/bench_scale.py [--clients 1 10 100 500] [--seconds 8] [--json out.json]

1. Calls/s and p95 of `run_python("6*7")` with 1, 10, 100 and 500 concurrent 2025-era HTTP
   clients, beside the no-op tool's on the same server (benchmarks/noop_bridge.py), and the
   bridge's own CPU per call read from /proc. Target: run_python >= 0.9 x no-op calls/s.
2. The same with 1 and 2 worker processes (`--workers`, stateless mode). Target: near-linear
   gain up to the core count.
3. Bridge memory per connected idle client: 1,000 clients that initialized and then wait.
   Target: 1,000 idle clients under 100 MB.

Clients, bridge and pool all run on this machine, so calls/s is bounded by the CPU they share;
the bridge's CPU per call is the figure that carries over to a machine of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from common import (
    bridge_env,
    bridge_http,
    cpu_seconds,
    descendants,
    instant_pool,
    percentile,
    process_table,
    status_kib,
)

TOOLS: dict[str, dict[str, Any]] = {"noop": {}, "run_python": {"code": "6*7"}}


def tree_cpu_seconds(root: int) -> float:
    total = 0.0
    for pid in (root, *descendants(root, process_table())):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            total += cpu_seconds(pid)
    return total


async def load(url: str, tool: str, clients: int, seconds: float, server_pid: int) -> dict[str, Any]:
    """`clients` connected clients call `tool` back to back; measure `seconds` of steady state.

    Steady state starts once every client has finished its first call (with 500 clients the
    first round alone can outlast a short window); connecting is not measured.
    """
    done: list[tuple[float, float]] = []  # (finished at, latency) of each call
    errors = 0
    connected = warmed = 0
    all_connected, all_warmed, stop = anyio.Event(), anyio.Event(), anyio.Event()
    go = anyio.Event()

    async def client_loop() -> None:
        nonlocal connected, warmed, errors
        async with Client(url, mode="legacy") as client:
            connected += 1
            if connected == clients:
                all_connected.set()
            await go.wait()
            first = True
            while not stop.is_set():
                started = time.perf_counter()
                result = await client.call_tool(tool, TOOLS[tool])
                finished = time.perf_counter()
                done.append((finished, finished - started))
                errors += bool(result.is_error)
                if first:
                    first = False
                    warmed += 1
                    if warmed == clients:
                        all_warmed.set()

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client_loop)
        await all_connected.wait()
        go.set()
        await all_warmed.wait()
        cpu_before, window_start = tree_cpu_seconds(server_pid), time.perf_counter()
        await anyio.sleep(seconds)
        cpu = tree_cpu_seconds(server_pid) - cpu_before
        window_end = time.perf_counter()
        stop.set()
    in_window = [latency for finished, latency in done if window_start <= finished < window_end]
    ms = [s * 1000 for s in in_window]
    return {
        "calls_per_s": round(len(in_window) / (window_end - window_start), 1),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "server_cpu_ms_per_call": round(cpu * 1000 / max(1, len(in_window)), 2),
        "calls": len(in_window),
        "errors": errors,
    }


async def client_levels(pool_url: str, levels: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    with bridge_http(bridge_env(pool_url), noop=True) as (url, pid):
        await load(url, "run_python", 10, 2.0, pid)  # warm-up: imports, connection pool
        for clients in levels:
            row: dict[str, Any] = {"clients": clients}
            for tool in TOOLS:
                row[tool] = await load(url, tool, clients, seconds, pid)
            row["ratio"] = round(row["run_python"]["calls_per_s"] / row["noop"]["calls_per_s"], 3)
            rows.append(row)
            print(f"  {clients} clients: {json.dumps(row)}", file=sys.stderr)
    return rows


async def workers(pool_url: str, counts: list[int], clients: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    env = bridge_env(pool_url, DSMCP_STATELESS_HTTP="true")
    for count in counts:
        with bridge_http(env, ("--workers", str(count))) as (url, pid):
            await load(url, "run_python", 10, 2.0, pid)
            row = {
                "workers": count,
                "clients": clients,
                **await load(url, "run_python", clients, seconds, pid),
            }
        rows.append(row)
        print(f"  {json.dumps(row)}", file=sys.stderr)
    base = rows[0]["calls_per_s"]
    for row in rows:
        row["speedup"] = round(row["calls_per_s"] / base, 2)
    return rows


async def idle_memory(pool_url: str, clients: int) -> dict[str, Any]:
    """Server RSS growth with `clients` initialized, idle 2025-era sessions (they hold state)."""
    with bridge_http(bridge_env(pool_url)) as (url, pid):
        async with Client(url, mode="legacy") as warm:  # first-session costs are not per client
            await warm.call_tool("list_files", {})
        await anyio.sleep(1.0)
        before = status_kib(pid, "VmRSS")
        connected = 0
        all_connected, leave = anyio.Event(), anyio.Event()
        limit = anyio.Semaphore(50)  # connect in waves, not 1,000 handshakes at once

        async def idle_client() -> None:
            nonlocal connected
            async with limit:
                client = Client(url, mode="legacy")
                await client.__aenter__()
            try:
                connected += 1
                if connected == clients:
                    all_connected.set()
                await leave.wait()
            finally:
                await client.__aexit__(None, None, None)

        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(idle_client)
            await all_connected.wait()
            await anyio.sleep(2.0)
            after = status_kib(pid, "VmRSS")
            leave.set()
    growth_mib = (after - before) / 1024
    return {
        "clients": clients,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "growth_mib": round(growth_mib, 1),
        "kib_per_client": round((after - before) / clients, 1),
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{'clients':>7} {'noop/s':>8} {'run_python/s':>13} {'ratio':>6} {'p95 noop':>9} {'p95 run':>8} "
        f"{'CPU/call noop':>14} {'CPU/call run':>13} {'errors':>6}"
    ]
    for row in report["levels"]:
        noop, run = row["noop"], row["run_python"]
        lines.append(
            f"{row['clients']:>7} {noop['calls_per_s']:>8} {run['calls_per_s']:>13} {row['ratio']:>6} "
            f"{noop['p95_ms']:>9} {run['p95_ms']:>8} {noop['server_cpu_ms_per_call']:>11} ms "
            f"{run['server_cpu_ms_per_call']:>10} ms {noop['errors'] + run['errors']:>6}"
        )
    worst = min(row["ratio"] for row in report["levels"])
    verdict = "ok" if worst >= 0.9 else "MISSED"
    lines.append(f"run_python / no-op calls/s, worst level: {worst} (target >= 0.9: {verdict})")
    if report.get("workers"):
        lines.append(f"{'workers':>7} {'run_python/s':>13} {'speedup':>8} {'p95':>8} {'CPU/call':>9}")
        for row in report["workers"]:
            lines.append(
                f"{row['workers']:>7} {row['calls_per_s']:>13} {row['speedup']:>8} {row['p95_ms']:>8} "
                f"{row['server_cpu_ms_per_call']:>6} ms"
            )
    if report.get("idle_memory"):
        idle = report["idle_memory"]
        verdict = "ok" if idle["growth_mib"] * 1000 / idle["clients"] < 100 else "MISSED"
        lines.append(
            f"idle clients: {idle['clients']} -> +{idle['growth_mib']} MiB "
            f"({idle['kib_per_client']} KiB each; target 1,000 under 100 MB: {verdict})"
        )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    with instant_pool() as pool_url:
        report["levels"] = await client_levels(pool_url, args.clients, args.seconds)
        if args.workers:
            report["workers"] = await workers(pool_url, args.workers, args.worker_clients, args.seconds)
        if args.idle:
            report["idle_memory"] = await idle_memory(pool_url, args.idle)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100, 500])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per tool and level")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--worker-clients", type=int, default=50)
    parser.add_argument(
        "--idle", type=int, default=1000, help="idle clients for the memory measure (0: skip)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small levels, short windows")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.workers, args.idle = [1, 10], 2.0, [1, 2], 100
    report = anyio.run(bench, args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
