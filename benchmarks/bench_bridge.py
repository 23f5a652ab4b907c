"""Bridge overhead and throughput, measured against the physical floor in the same run.

    .venv/bin/python benchmarks/bench_bridge.py [--n 300] [--clients 50] [--json out.json]

1. Latency (real local pool): `run_python("6*7")` through the bridge over stdio and over HTTP,
   the protocol floor (a no-op tool on the same server and transport), and a direct REST call to
   the same pool. Overhead = bridge p50 - (floor p50 + REST p50); target <= 1 ms.
2. Throughput: calls/s of `run_python` with N concurrent HTTP clients against a pool that answers
   at once (the fault pool in instant mode), beside the no-op tool's calls/s; target >= 0.9.

The server runs in a subprocess (this file with --serve), so client and server do not share a GIL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fault_pool import FaultPool  # noqa: E402
from tests.support.local_pool import local_pool  # noqa: E402
from tests.support.serve import free_port  # noqa: E402

from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig  # noqa: E402

TOKEN = "bench-token"
SECRET = "bench-session-secret-0123456789abcdef"


# ------------------------------------------------------------------------------ server side
def serve(transport: str, port: int) -> None:
    """Run the bridge with an extra no-op tool (the protocol floor on the same server)."""
    import uvicorn

    from dynamic_sessions_mcp.cli import configure_logging
    from dynamic_sessions_mcp.config import Settings
    from dynamic_sessions_mcp.http_app import mcp_http_app
    from dynamic_sessions_mcp.server import PoolTarget, open_bridge

    settings = Settings()
    configure_logging(settings.log_level)

    async def main() -> None:
        async with open_bridge(settings, PoolTarget.from_settings(settings)) as mcp:

            async def noop() -> str:
                return "ok"

            mcp.tool(name="noop")(noop)
            if transport == "stdio":
                await mcp.run_stdio_async()
                return
            app = mcp_http_app(mcp, settings)
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
            await uvicorn.Server(config).serve()

    anyio.run(main)


# ------------------------------------------------------------------------------ client side
def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(pct(ms, 0.95), 3), "n": len(ms)}


def server_env(pool_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DSMCP_POOL_ENDPOINT": pool_url,
        "DSMCP_POOL_AUTH": "token",
        "DSMCP_POOL_TOKEN": TOKEN,
        "DSMCP_POOL_TYPE": "python",
        "DSMCP_SESSION_SECRET": SECRET,
        "DSMCP_LOG_LEVEL": "WARNING",
    }


async def interleaved(client: Client, n: int) -> dict[str, list[float]]:
    """Alternate the tool and the floor so drift hits both alike."""
    out: dict[str, list[float]] = {"bridge": [], "floor": []}
    first = await client.call_tool("run_python", {"code": "6*7"})
    handle = first.structured_content["session"] if first.structured_content else ""
    for _ in range(20):  # warm up
        await client.call_tool("noop", {})
        await client.call_tool("run_python", {"code": "6*7", "session": handle})
    for _ in range(n):
        t = time.perf_counter()
        await client.call_tool("noop", {})
        out["floor"].append(time.perf_counter() - t)
        t = time.perf_counter()
        r = await client.call_tool("run_python", {"code": "6*7", "session": handle})
        out["bridge"].append(time.perf_counter() - t)
        assert not r.is_error and r.structured_content and r.structured_content["result"] == 42
    return out


async def direct_rest(pool_url: str, n: int) -> list[float]:
    params = {"api-version": "2025-10-02-preview", "identifier": "bench-direct-rest"}
    body = {"codeInputType": "Inline", "executionType": "Synchronous", "code": "6*7", "timeoutInSeconds": 60}
    samples = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for i in range(n + 20):
            t = time.perf_counter()
            r = await http.post(f"{pool_url}/executions", params=params, json=body)
            if i >= 20:
                samples.append(time.perf_counter() - t)
            r.raise_for_status()
    return samples


def start_http_server(pool_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "http", "--port", str(port)], env=server_env(pool_url)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url + "/healthz")
    except RuntimeError:
        proc.kill()
        raise
    return proc, url + "/mcp"


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def latency(pool_url: str, n: int) -> dict[str, Any]:
    results: dict[str, Any] = {"direct_rest": summary(await direct_rest(pool_url, n))}
    params = StdioServerParameters(
        command=sys.executable, args=[__file__, "--serve", "stdio"], env=server_env(pool_url)
    )
    async with Client(params, mode="legacy") as client:
        stdio = await interleaved(client, n)
    results["stdio"] = {k: summary(v) for k, v in stdio.items()}
    proc, url = start_http_server(pool_url)
    try:
        for era in ("legacy", "auto"):
            async with Client(url, mode=era) as client:
                samples = await interleaved(client, n)
            results[f"http_{era}"] = {k: summary(v) for k, v in samples.items()}
    finally:
        proc.terminate()
        proc.wait()
    rest = results["direct_rest"]["p50_ms"]
    for key in ("stdio", "http_legacy", "http_auto"):
        row = results[key]
        row["overhead_ms"] = round(row["bridge"]["p50_ms"] - row["floor"]["p50_ms"] - rest, 3)
    return results


async def calls_per_second(
    url: str, tool: str, args: dict[str, Any], clients: int, seconds: float
) -> tuple[float, int]:
    """`clients` concurrent 2025-era HTTP clients calling `tool` for `seconds`: (calls/s, errors)."""
    done = errors = 0

    async def worker() -> None:
        nonlocal done, errors
        async with Client(url, mode="legacy") as client:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                r = await client.call_tool(tool, args)
                done += 1
                errors += bool(r.is_error)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(worker)
    return done / (time.perf_counter() - start), errors


async def throughput(pool_url: str, clients: int, seconds: float) -> dict[str, Any]:
    """Best of two alternating rounds for each tool, so warm-up and drift hit both alike."""
    proc, url = start_http_server(pool_url)
    out: dict[str, Any] = {"clients": clients, "noop": 0.0, "run_python": 0.0, "errors": 0}
    try:
        for _ in range(2):
            for tool, args in (("noop", {}), ("run_python", {"code": "6*7"})):
                rate, errors = await calls_per_second(url, tool, args, clients, seconds)
                out[tool] = max(out[tool], round(rate, 1))
                out["errors"] += errors
    finally:
        proc.terminate()
        proc.wait()
    out["ratio"] = round(out["run_python"] / out["noop"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=["stdio", "http", "instant-pool"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.serve == "instant-pool":
        import uvicorn

        uvicorn.run(FaultPool(instant=True).app, host="127.0.0.1", port=args.port, log_level="warning")
        return
    if args.serve:
        serve(args.serve, args.port)
        return

    report: dict[str, Any] = {}
    with local_pool(LocalPoolConfig(token=TOKEN, warm_sessions=1, max_sessions=10)) as pool_url:
        report["latency"] = anyio.run(latency, pool_url, args.n)
    port = free_port()
    instant = subprocess.Popen([sys.executable, __file__, "--serve", "instant-pool", "--port", str(port)])
    try:
        wait_healthy(f"http://127.0.0.1:{port}/metadata")
        report["throughput"] = anyio.run(throughput, f"http://127.0.0.1:{port}", args.clients, args.seconds)
    finally:
        instant.terminate()
        instant.wait()

    lat = report["latency"]
    print(f"direct REST 6*7: p50 {lat['direct_rest']['p50_ms']} ms, p95 {lat['direct_rest']['p95_ms']} ms")
    print(f"{'transport':14} {'bridge p50':>11} {'bridge p95':>11} {'floor p50':>10} {'overhead':>9}")
    for key in ("stdio", "http_legacy", "http_auto"):
        row = lat[key]
        print(
            f"{key:14} {row['bridge']['p50_ms']:>11} {row['bridge']['p95_ms']:>11} "
            f"{row['floor']['p50_ms']:>10} {row['overhead_ms']:>9}"
        )
    tp = report["throughput"]
    print(
        f"throughput, {tp['clients']} HTTP clients, instant pool: run_python {tp['run_python']}/s, "
        f"noop {tp['noop']}/s, ratio {tp['ratio']} (errors {tp['errors']})"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
