"""Entra token fetches per 10,000 tool calls through the bridge; target: one per token lifetime.

    .venv/bin/python benchmarks/bench_credential.py [--calls 10000] [--callers 20] [--quick] [--json out.json]

The bridge runs in this process, `open_bridge(..., pool_auth=EntraTokenAuth(credential))`, behind an
in-memory MCP Client with concurrent callers. No Entra is reachable here, so the credential is a
stand-in for azure-identity's: it counts get_token calls and takes 50 ms per fetch, long enough for
concurrent callers to pile up on a refresh. Everything else is real.

1. `list_files` against the instant pool (its own process; it answers at once and ignores tokens):
   (i) 1 h tokens: expect 1 fetch; (ii) 4 s tokens with a 1 s refresh margin: expect a fetch at
   the start and one more each time a token enters its margin, 1 + run time // (lifetime - margin).
2. The real local pool, which checks the bearer: `list_files` calls and `run_python("6*7")` with the
   fetched token must succeed, and a credential handing out a wrong token must be refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.server import MCPServer
from pydantic import SecretStr

from common import POOL_TOKEN, SESSION_SECRET, instant_pool
from dynamic_sessions_mcp.config import PoolAuth, Settings
from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig
from dynamic_sessions_mcp.pools.base import PoolType
from dynamic_sessions_mcp.pools.credentials import EntraTokenAuth
from dynamic_sessions_mcp.server import PoolTarget, open_bridge
from tests.support.local_pool import local_pool

FETCH_DELAY_S = 0.05
HOUR_S = 3600.0
SHORT_LIFETIME_S = 4.0
SHORT_MARGIN_S = 1.0


@dataclass(frozen=True)
class Token:
    token: str
    expires_on: float


class CountingCredential:
    """Hands out `token`, valid for `lifetime_s` from each fetch; counts the fetches."""

    def __init__(self, token: str, lifetime_s: float) -> None:
        self.token = token
        self.lifetime_s = lifetime_s
        self.fetches = 0

    async def get_token(self, *scopes: str, **kwargs: object) -> Token:
        self.fetches += 1
        await asyncio.sleep(FETCH_DELAY_S)
        return Token(self.token, time.time() + self.lifetime_s)

    async def close(self) -> None:
        pass


def settings_for(pool_url: str) -> Settings:
    """As tests/conftest.py bridge_settings, with Entra as the pool auth (the credential is passed in)."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        pool_endpoint=pool_url,
        pool_auth=PoolAuth.ENTRA,
        pool_type=PoolType.PYTHON,
        session_secret=SecretStr(SESSION_SECRET),
    )


@dataclass
class Run:
    calls: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0


async def hammer(mcp: MCPServer, tool: str, args: dict[str, Any], calls: int, callers: int) -> Run:
    """`calls` calls of `tool`, shared among `callers` concurrent callers on one in-memory client."""
    run = Run()
    remaining = calls
    async with Client(mcp) as client:

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    result = await client.call_tool(tool, args)
                    failed = f"tool error: {result.content[0]}" if result.is_error else ""
                except Exception as exc:  # counted and reported, not hidden
                    failed = repr(exc)
                run.calls += 1
                if failed:
                    run.errors += 1
                    run.first_error = run.first_error or failed[:300]

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        run.seconds = time.perf_counter() - started
    return run


async def fetches_for(
    pool_url: str, lifetime_s: float, margin_s: float, calls: int, callers: int
) -> dict[str, Any]:
    credential = CountingCredential(POOL_TOKEN, lifetime_s)
    settings = settings_for(pool_url)
    auth = EntraTokenAuth(credential, refresh_margin_s=margin_s)
    async with open_bridge(settings, PoolTarget.from_settings(settings), pool_auth=auth) as mcp:
        run = await hammer(mcp, "list_files", {}, calls, callers)
    expected = 1 + int(run.seconds // (lifetime_s - margin_s))
    return {
        "lifetime_s": lifetime_s,
        "refresh_margin_s": margin_s,
        **counts(run, credential),
        "expected": expected,
        "fetches_per_10k_calls": round(credential.fetches * 10_000 / run.calls, 2),
        "ok": run.errors == 0 and abs(credential.fetches - expected) <= 1,
    }


def counts(run: Run, credential: CountingCredential) -> dict[str, Any]:
    return {
        "calls": run.calls,
        "errors": run.errors,
        "first_error": run.first_error,
        "seconds": round(run.seconds, 2),
        "calls_per_s": round(run.calls / run.seconds, 1),
        "fetches": credential.fetches,
    }


async def checked_by_pool(pool_url: str, calls: int, callers: int) -> dict[str, Any]:
    """Against a pool that checks the bearer: the fetched token works, a wrong one is refused."""
    settings = settings_for(pool_url)
    credential = CountingCredential(POOL_TOKEN, HOUR_S)
    async with open_bridge(
        settings, PoolTarget.from_settings(settings), pool_auth=EntraTokenAuth(credential)
    ) as mcp:
        run = await hammer(mcp, "list_files", {}, calls, callers)
        async with Client(mcp) as client:
            answer = await client.call_tool("run_python", {"code": "6*7"})
    python_ok = not answer.is_error and (answer.structured_content or {}).get("result") == 42

    wrong = CountingCredential("not-the-pool-token", HOUR_S)
    logging.disable(logging.WARNING)  # the refusals below are expected
    async with (
        open_bridge(settings, PoolTarget.from_settings(settings), pool_auth=EntraTokenAuth(wrong)) as mcp,
        Client(mcp) as client,
    ):
        refused = (await client.call_tool("list_files", {})).is_error
    logging.disable(logging.NOTSET)
    return {
        **counts(run, credential),
        "run_python_6x7_ok": python_ok,
        "wrong_token_refused": refused,
        # A 401 drops the cached token and the request is sent once more with a fresh one.
        "wrong_token_fetches": wrong.fetches,
        "ok": run.errors == 0 and credential.fetches == 1 and python_ok and refused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="tool calls per lifetime scenario")
    parser.add_argument("--pool-calls", type=int, default=500, help="tool calls against the real local pool")
    parser.add_argument("--callers", type=int, default=20, help="concurrent callers")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 and 100 calls")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # before MCPServer's own basicConfig(level=INFO)
    if args.quick:
        args.calls, args.pool_calls = 1_000, 100

    report: dict[str, Any] = {"callers": args.callers, "fetch_delay_s": FETCH_DELAY_S}
    with instant_pool() as url:
        report["hour_tokens"] = anyio.run(fetches_for, url, HOUR_S, 300.0, args.calls, args.callers)
        report["short_tokens"] = anyio.run(
            fetches_for, url, SHORT_LIFETIME_S, SHORT_MARGIN_S, args.calls, args.callers
        )
    with local_pool(LocalPoolConfig(token=POOL_TOKEN, warm_sessions=1, max_sessions=10)) as url:
        report["local_pool"] = anyio.run(checked_by_pool, url, args.pool_calls, args.callers)

    print(
        f"{args.callers} concurrent callers, in-memory client, get_token takes {FETCH_DELAY_S * 1000:.0f} ms"
    )
    print(f"{'scenario':28} {'calls':>6} {'errors':>6} {'calls/s':>8} {'fetches':>7} {'expected':>8}  target")
    for key, label in (
        ("hour_tokens", "instant pool, 1 h tokens"),
        ("short_tokens", "instant pool, 4 s tokens"),
    ):
        row = report[key]
        print(
            f"{label:28} {row['calls']:>6} {row['errors']:>6} {row['calls_per_s']:>8} {row['fetches']:>7} "
            f"{row['expected']:>8}  one per lifetime: {'ok' if row['ok'] else 'MISSED'}"
        )
    pool = report["local_pool"]
    print(
        f"{'local pool, 1 h tokens':28} {pool['calls']:>6} {pool['errors']:>6} {pool['calls_per_s']:>8} "
        f"{pool['fetches']:>7} {1:>8}  token sent and accepted: {'ok' if pool['ok'] else 'MISSED'}"
    )
    print(
        f"run_python('6*7') = 42: {pool['run_python_6x7_ok']}; "
        f"wrong token refused: {pool['wrong_token_refused']} "
        f"({pool['wrong_token_fetches']} fetches); 4 s tokens refresh 1 s before expiry, run "
        f"{report['short_tokens']['seconds']} s"
    )
    for row in (report["hour_tokens"], report["short_tokens"], pool):
        if row["first_error"]:
            print(f"first error: {row['first_error']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
