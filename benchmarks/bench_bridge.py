"""Bridge overhead, measured against the physical floor in the same run.

    .venv/bin/python benchmarks/bench_bridge.py [--n 300] [--json out.json]

`run_python("6*7")` through the bridge over stdio and over HTTP (both protocol eras), the protocol
floor (a no-op tool on the same server and transport: benchmarks/noop_bridge.py), and a direct
REST call to the same local pool. Overhead = bridge p50 - (floor p50 + REST p50); target <= 1 ms.
Throughput and scale are in bench_scale.py.

The server runs in a subprocess, so client and server do not share a GIL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters

from common import API_VERSION, POOL_TOKEN, ROOT, bridge_env, bridge_http, local_pool_process, summary_ms


class DirectRest:
    """`6*7` straight to the pool's REST API: the pool's share of a bridge call."""

    def __init__(self, http: httpx.AsyncClient, pool_url: str) -> None:
        self.http = http
        self.url = f"{pool_url}/executions"
        self.params = {"api-version": API_VERSION, "identifier": "bench-direct-rest"}
        self.body = {"codeInputType": "Inline", "executionType": "Synchronous", "code": "6*7"}

    async def __call__(self) -> None:
        r = await self.http.post(self.url, params=self.params, json=self.body)
        r.raise_for_status()


async def interleaved(client: Client, rest: DirectRest, n: int) -> dict[str, Any]:
    """Alternate the tool, the floor and the direct call, so drift hits all three alike."""
    samples: dict[str, list[float]] = {"bridge": [], "floor": [], "direct_rest": []}
    first = await client.call_tool("run_python", {"code": "6*7"})
    handle = first.structured_content["session"] if first.structured_content else ""
    steps = {
        "floor": lambda: client.call_tool("noop", {}),
        "bridge": lambda: client.call_tool("run_python", {"code": "6*7", "session": handle}),
        "direct_rest": rest,
    }
    for i in range(n + 20):  # the first 20 warm up
        for name, step in steps.items():
            t = time.perf_counter()
            r = await step()
            if i >= 20:
                samples[name].append(time.perf_counter() - t)
            if name == "bridge":
                assert r and not r.is_error and r.structured_content and r.structured_content["result"] == 42
    row: dict[str, Any] = {name: summary_ms(values) for name, values in samples.items()}
    row["overhead_ms"] = round(
        row["bridge"]["p50_ms"] - row["floor"]["p50_ms"] - row["direct_rest"]["p50_ms"], 3
    )
    return row


async def latency(pool_url: str, n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    noop_bridge = str(ROOT / "benchmarks" / "noop_bridge.py")
    params = StdioServerParameters(
        command=sys.executable, args=[noop_bridge, "--transport", "stdio"], env=bridge_env(pool_url)
    )
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {POOL_TOKEN}"}) as http:
        rest = DirectRest(http, pool_url)
        async with Client(params, mode="legacy") as client:
            results["stdio"] = await interleaved(client, rest, n)
        with bridge_http(bridge_env(pool_url), noop=True) as (url, _):
            for era in ("legacy", "auto"):
                async with Client(url, mode=era) as client:
                    results[f"http_{era}"] = await interleaved(client, rest, n)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=300, help="samples per transport")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 samples")
    args = parser.parse_args()
    if args.quick:
        args.n = 30
    with local_pool_process(DSMCP_LOCAL_WARM_SESSIONS="1") as (pool_url, _):
        report = anyio.run(latency, pool_url, args.n)
    print(f"{'transport':12} {'bridge p50':>10} {'p95':>7} {'floor p50':>9} {'REST p50':>8} {'overhead':>8}")
    for key in ("stdio", "http_legacy", "http_auto"):
        row = report[key]
        verdict = "ok" if row["overhead_ms"] <= 1.0 else "MISSED"
        bridge, floor, rest = row["bridge"], row["floor"], row["direct_rest"]
        print(
            f"{key:12} {bridge['p50_ms']:>10} {bridge['p95_ms']:>7} {floor['p50_ms']:>9} "
            f"{rest['p50_ms']:>8} {row['overhead_ms']:>8} ms (target <= 1 ms: {verdict})"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
