"""Bounded soak: many concurrent MCP sessions against the local pool, then nothing left behind.

    .venv/bin/python benchmarks/bench_soak.py [--sessions 200] [--minutes 3] [--quick] [--json out.json]

The local pool (`dynamic-sessions-mcp local-pool`) and the bridge (`--transport http`) run in their
own processes. N MCP clients (2025-era streamable HTTP, a share on the 2026 era) each hold one
session: a stateful `run_python` (append to a list; the length must be what the client expects,
so a lost or swapped session shows), now and then upload_file / list_files / download_file, with
a think time that keeps the total call rate sustainable on 2 cores; then every client calls
end_session and disconnects.

Reported: calls and errors by kind (must be 0), the session ramp-up, latency p50/p95 per time
bucket (drift = last vs first), bridge RSS and the pool's process tree RSS/PSS sampled every
~10 s (drift = end of soak vs after ramp-up, per session), and after the end what is left: the
pool's listSessions, bwrap sandboxes under the pool process beyond its warm kernels, session
directories and the cgroups of the sessions' sandboxes (all must be 0), and whether the pool's
process count is back to its baseline (its open fds and threads are shown beside it).

New sessions are admitted a few at a time (`--admit`): the pool starts at most two kernels at
once (~0.6 s each), so a burst of 200 first calls would wait longer than the bridge's 30 s pool
request timeout; the ramp-up time is what the pool can do, not a queue the benchmark made up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client
from mcp.types import CallToolResult

from common import (
    API_VERSION,
    POOL_TOKEN,
    bridge_env,
    bridge_http,
    cpu_seconds,
    descendants,
    local_pool_process,
    process_table,
    rss_pss_kib,
    status_kib,
    summary_ms,
)

CGROUP_ROOT = Path("/sys/fs/cgroup")


# ------------------------------------------------------------------------------ /proc
def sandbox_count(pool_pid: int, table: dict[int, tuple[int, str]] | None = None) -> int:
    """bwrap processes the pool started: one per sandbox (live, warm or starting)."""
    table = table if table is not None else process_table()
    return sum(1 for pid, (ppid, comm) in table.items() if ppid == pool_pid and comm == "bwrap")


def fd_kinds(pid: int, port: int) -> dict[str, int]:
    """The pool server's open fds: accepted HTTP connections (TCP sockets on its port; the bridge
    keeps idle ones) apart from everything else (files, pipes, zmq sockets, eventfds)."""
    http_inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] != "0A":  # 0A: LISTEN
                    http_inodes.add(cols[9])
    kinds = {"http_conns": 0, "other_fds": 0}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            http = target.startswith("socket:[") and target[8:-1] in http_inodes
            kinds["http_conns" if http else "other_fds"] += 1
    return kinds


@dataclass(frozen=True)
class Procs:
    """The processes under watch."""

    bridge_pid: int
    pool_pid: int
    pool_port: int


def memory_sample(label: str, t: float, procs: Procs) -> dict[str, Any]:
    """Bridge RSS; the pool server's own RSS/PSS, fds and threads; its sandboxes' (everything
    under it) RSS/PSS."""
    bridge_pid, pool_pid = procs.bridge_pid, procs.pool_pid
    table = process_table()
    under = descendants(pool_pid, table)
    pool_rss, pool_pss = rss_pss_kib(pool_pid)
    box_rss = box_pss = 0
    for pid in under:
        rss, pss = rss_pss_kib(pid)
        box_rss, box_pss = box_rss + rss, box_pss + pss
    return {
        "label": label,
        "t_s": round(t, 1),
        "bridge_rss_kib": status_kib(bridge_pid, "VmRSS"),
        "pool_rss_kib": pool_rss,
        "pool_pss_kib": pool_pss,
        "pool_processes": 1 + len(under),
        **fd_kinds(pool_pid, procs.pool_port),
        "pool_threads": len(os.listdir(f"/proc/{pool_pid}/task")),
        "sandboxes": sandbox_count(pool_pid, table),
        "sandbox_rss_kib": box_rss,
        "sandbox_pss_kib": box_pss,
    }


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores): to tell others' load from ours."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_now(procs: Procs) -> dict[str, float]:
    """CPU seconds used so far by the bridge, the pool server, its live sandboxes, and this process."""
    boxes = 0.0
    for pid in descendants(procs.pool_pid, process_table()):
        with contextlib.suppress(OSError):
            boxes += cpu_seconds(pid)
    return {
        "machine": machine_busy_s(),
        "bridge": cpu_seconds(procs.bridge_pid),
        "pool": cpu_seconds(procs.pool_pid),
        "sandboxes": boxes,
        "clients": time.process_time(),
    }


def cgroups_left(sandbox_ids: set[str]) -> list[str]:
    """Cgroup dirs (any v1 controller or the v2 tree) still present for sandboxes of ended sessions."""
    parents = [p for p in (CGROUP_ROOT / "dsmcp", *CGROUP_ROOT.glob("*/dsmcp")) if p.is_dir()]
    return [str(p / sid) for sid in sorted(sandbox_ids) for p in parents if (p / sid).is_dir()]


def session_dirs(data_dir: Path) -> int:
    """Session directories the pool holds (each live or warm sandbox has one)."""
    return sum(1 for _ in data_dir.glob("pool-*/s-*"))


# ------------------------------------------------------------------------------ the pool
@contextlib.contextmanager
def soak_pool(max_sessions: int, warm: int, data_dir: Path, log: Path) -> Iterator[tuple[str, int]]:
    """The local pool in its own process, its warm kernels ready: yield (URL, pid)."""
    settings = {
        "DSMCP_LOCAL_MAX_SESSIONS": str(max_sessions),
        "DSMCP_LOCAL_WARM_SESSIONS": str(warm),
        "DSMCP_LOCAL_DATA_DIR": str(data_dir),
    }
    with log.open("wb") as log_file, local_pool_process(log_file, **settings) as (url, pid):
        deadline = time.monotonic() + 120
        while True:
            r = httpx.get(
                url + "/metadata",
                params={"api-version": API_VERSION},
                headers={"Authorization": f"Bearer {POOL_TOKEN}"},
            )
            if r.status_code == 200 and r.json()["readySessions"] >= warm:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the local pool's warm kernels were not ready in 120 s")
            time.sleep(0.2)
        yield url, pid


class PoolView:
    """What the pool itself says: its live sessions and its warm kernels."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.sandbox_ids: set[str] = set()  # every sandbox a live session had (for the cgroup check)

    async def sessions(self) -> int:
        r = await self.http.get("listSessions", params={"api-version": API_VERSION})
        r.raise_for_status()
        live = r.json()["sessions"]
        self.sandbox_ids.update(s["etag"] for s in live)
        return len(live)

    async def ready(self) -> int:
        r = await self.http.get("metadata", params={"api-version": API_VERSION})
        r.raise_for_status()
        return int(r.json()["readySessions"])

    async def wait_warm(self, warm: int, timeout_s: float) -> float:
        """Seconds until the pool holds `warm` ready kernels again (gives up after `timeout_s`)."""
        started = time.monotonic()
        while await self.ready() < warm and time.monotonic() - started < timeout_s:
            await anyio.sleep(0.1)
        return round(time.monotonic() - started, 2)


# ------------------------------------------------------------------------------ clients
class CallFailed(Exception):
    """A call that returned, but not what the client expected."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def structured(result: CallToolResult) -> dict[str, Any]:
    if result.is_error:
        first = result.content[0] if result.content else None
        text = first.text if first is not None and first.type == "text" else ""
        raise CallFailed("tool_error", text[:300])
    if not isinstance(result.structured_content, dict):
        raise CallFailed("no_structured_content", str(result.content)[:300])
    return result.structured_content


def result_text(result: CallToolResult) -> str:
    first = result.content[0]
    return first.text if first.type == "text" else ""


@dataclass
class Stats:
    soak_start: float = 0.0
    bucket_s: float = 60.0
    last_bucket: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    first_call_s: list[float] = field(default_factory=list)
    end_session_s: list[float] = field(default_factory=list)
    # bucket -> tool -> latencies (s) of calls made during the soak
    buckets: dict[int, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        self.examples.setdefault(kind, detail[:300])

    async def call(
        self,
        client: Client,
        label: str,
        arguments: dict[str, Any],
        check: Callable[[CallToolResult], Any],
        tool: str = "",
    ) -> Any:
        """One timed call of `tool` (default: `label`); a failure is counted by kind and raised
        as CallFailed. Returns what `check` makes of the result."""
        self.calls[label] += 1
        started = time.monotonic()
        try:
            result = await client.call_tool(tool or label, arguments)
            elapsed = time.monotonic() - started
            checked = check(result)
        except CallFailed as exc:
            self.error(f"{label}: {exc.kind}", str(exc))
            raise
        except Exception as exc:
            self.error(f"{label}: {type(exc).__name__}", repr(exc))
            raise CallFailed(type(exc).__name__, repr(exc)) from exc
        if label == "first run_python":
            self.first_call_s.append(elapsed)
        elif label == "end_session":
            self.end_session_s.append(elapsed)
        elif self.soak_start and started >= self.soak_start:
            # Calls started in the last moments of a partial bucket count with the one before.
            bucket = min(int((started - self.soak_start) // self.bucket_s), self.last_bucket)
            self.buckets[bucket][label].append(elapsed)
        return checked


@dataclass
class Plan:
    url: str
    sessions: int
    think_s: float
    files_every: int
    soak_s: float
    admit: anyio.Semaphore
    stats: Stats
    everyone_in: anyio.Event = field(default_factory=anyio.Event)
    all_up: anyio.Event = field(default_factory=anyio.Event)  # set when the soak starts
    may_end: anyio.Event = field(default_factory=anyio.Event)  # set once the end-of-soak measures are taken
    up: int = 0
    stop_at: float = 0.0

    def arrived(self) -> None:
        """A client has its session (or failed to get one): the ramp-up is over when all have."""
        self.up += 1
        if self.up == self.sessions:
            self.everyone_in.set()


def expect_length(n: int) -> Callable[[CallToolResult], str]:
    """The result must be len(xs) == n: the session kept every earlier append, and only those."""

    def check(result: CallToolResult) -> str:
        body = structured(result)
        if body.get("result") != n:
            detail = f"expected len(xs) == {n}, got {body.get('result')!r}: {str(body.get('stderr'))[:200]}"
            raise CallFailed("state_mismatch", detail)
        return str(body["session"])

    return check


def expect_ended(result: CallToolResult) -> None:
    if structured(result).get("ended") is not True:
        raise CallFailed("not_ended", str(result.structured_content))


async def client_session(index: int, mode: str, plan: Plan) -> None:
    """One MCP client holding one session for the whole soak, then ending it."""
    stats, rng = plan.stats, random.Random(index)
    handle, arrived = "", False
    try:
        async with Client(plan.url, mode=mode) as client:
            try:
                async with plan.admit:
                    first = {"code": "xs = [0]\nlen(xs)"}
                    handle = await stats.call(
                        client, "first run_python", first, expect_length(1), "run_python"
                    )
            except CallFailed:
                pass
            arrived = True
            plan.arrived()
            await plan.all_up.wait()
            if handle:
                await soak_loop(client, handle, rng, plan)
                await plan.may_end.wait()
                await stats.call(client, "end_session", {"session": handle}, expect_ended)
    except CallFailed:
        pass
    except Exception as exc:  # connecting or disconnecting failed
        stats.error(f"client ({mode}): {type(exc).__name__}", repr(exc))
    finally:
        if not arrived:
            plan.arrived()


async def think(rng: random.Random, plan: Plan, low: float, high: float) -> None:
    """A think time, cut short at the end of the soak."""
    await anyio.sleep(max(0.0, min(rng.uniform(low, high) * plan.think_s, plan.stop_at - time.monotonic())))


async def soak_loop(client: Client, handle: str, rng: random.Random, plan: Plan) -> None:
    stats, length, step = plan.stats, 1, 0
    await think(rng, plan, 0.0, 1.0)  # spread the clients' calls evenly from the start
    while time.monotonic() < plan.stop_at:
        step += 1
        try:
            code = {"code": f"xs.append({length})\nlen(xs)", "session": handle}
            await stats.call(client, "run_python", code, expect_length(length + 1))
            length += 1
            if step % plan.files_every == 0:
                await file_round(client, handle, step, rng, stats)
        except CallFailed:
            # Carry on from what the session now holds, so one loss is counted once.
            with contextlib.suppress(CallFailed):
                resync = {"code": "xs = globals().get('xs', [])\nlen(xs)", "session": handle}
                length = await stats.call(
                    client, "resync", resync, lambda r: int(structured(r)["result"]), "run_python"
                )
        await think(rng, plan, 0.5, 1.5)


async def file_round(client: Client, handle: str, step: int, rng: random.Random, stats: Stats) -> None:
    """Upload a small text file, see it listed, read it back byte for byte."""
    name = f"soak/f{step}.txt"
    content = "".join(rng.choice("abcdefghij\n") for _ in range(rng.randint(64, 2048)))

    def uploaded(r: CallToolResult) -> None:
        if structured(r)["size"] != len(content):
            raise CallFailed("size_mismatch", str(r.structured_content))

    def listed(r: CallToolResult) -> None:
        paths = {f["path"]: f["size"] for f in structured(r)["files"]}
        if paths.get(f"/mnt/data/{name}") != len(content):
            raise CallFailed("not_listed", str(sorted(paths))[:300])

    def downloaded(r: CallToolResult) -> None:
        if structured(r)["size"] != len(content) or not result_text(r).endswith("\n" + content):
            raise CallFailed("content_mismatch", result_text(r)[:300])

    await stats.call(client, "upload_file", {"path": name, "content": content, "session": handle}, uploaded)
    await stats.call(client, "list_files", {"path": "soak", "session": handle}, listed)
    await stats.call(client, "download_file", {"path": name, "session": handle}, downloaded)


# ------------------------------------------------------------------------------ the run
async def sampler(
    samples: list[dict[str, Any]], every_s: float, t0: float, procs: Procs, view: PoolView
) -> None:
    while True:
        await anyio.sleep(every_s)
        sample = await anyio.to_thread.run_sync(memory_sample, "soak", time.monotonic() - t0, procs)
        sample["pool_sessions"] = await view.sessions()
        samples.append(sample)


async def settle(view: PoolView, pool_pid: int, data_dir: Path, grace_s: float) -> dict[str, Any]:
    """Poll until nothing is left (or the grace period is over); report what is left then."""
    started = time.monotonic()
    while True:
        live = await view.sessions()
        ready = await view.ready()
        boxes = sandbox_count(pool_pid)
        left = {
            "pool_sessions": live,
            "bwrap_beyond_warm": boxes - ready,
            "session_dirs_beyond_warm": session_dirs(data_dir) - ready,
            "cgroups": cgroups_left(view.sandbox_ids),
            "warm_kernels": ready,
            "sandboxes_tracked": len(view.sandbox_ids),
        }
        clean = not live and boxes == ready and left["session_dirs_beyond_warm"] == 0 and not left["cgroups"]
        waited = time.monotonic() - started
        if clean or waited >= grace_s:
            left["settled_after_s"] = round(waited, 2)
            return left
        await anyio.sleep(0.5)


async def soak(args: argparse.Namespace, pool_url: str, pool_pid: int, data_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {POOL_TOKEN}"}
    with bridge_http(bridge_env(pool_url)) as (mcp_url, bridge_pid):
        async with httpx.AsyncClient(base_url=pool_url + "/", headers=headers) as http:
            view = PoolView(http)
            procs = Procs(bridge_pid, pool_pid, int(pool_url.rsplit(":", 1)[1]))
            t0 = time.monotonic()
            samples = [memory_sample("baseline", 0.0, procs)]
            samples[0]["pool_sessions"] = await view.sessions()
            soak_s = args.minutes * 60
            stats = Stats(bucket_s=args.bucket_s, last_bucket=max(0, math.ceil(soak_s / args.bucket_s) - 1))
            plan = Plan(
                url=mcp_url,
                sessions=args.sessions,
                think_s=args.sessions / args.rate,
                files_every=args.files_every,
                soak_s=soak_s,
                admit=anyio.Semaphore(args.admit),
                stats=stats,
            )
            n_auto = round(args.sessions * args.auto_share)
            modes = ["auto" if i < n_auto else "legacy" for i in range(args.sessions)]
            random.Random(0).shuffle(modes)
            async with anyio.create_task_group() as tg:
                tg.start_soon(sampler, samples, args.sample_s, t0, procs, view)
                async with anyio.create_task_group() as clients:
                    for i, mode in enumerate(modes):
                        clients.start_soon(client_session, i, mode, plan)
                    await plan.everyone_in.wait()
                    report["ramp_s"] = round(time.monotonic() - t0, 2)
                    # The warm pool refills after the last session took its kernel: let it finish, so
                    # the after-ramp memory and the first latency bucket are the steady state.
                    report["warm_refill_s"] = await view.wait_warm(args.warm, timeout_s=30.0)
                    after_ramp = await anyio.to_thread.run_sync(
                        memory_sample, "after_ramp", time.monotonic() - t0, procs
                    )
                    after_ramp["pool_sessions"] = await view.sessions()
                    samples.append(after_ramp)
                    cpu0 = await anyio.to_thread.run_sync(cpu_now, procs)
                    stats.soak_start = time.monotonic()
                    plan.stop_at = stats.soak_start + soak_s
                    plan.all_up.set()
                    await anyio.sleep(max(0.0, plan.stop_at - time.monotonic()))
                    end_soak = await anyio.to_thread.run_sync(
                        memory_sample, "end_of_soak", time.monotonic() - t0, procs
                    )
                    end_soak["pool_sessions"] = await view.sessions()
                    samples.append(end_soak)
                    cpu1 = await anyio.to_thread.run_sync(cpu_now, procs)
                    soak_cpu = {k: v - cpu0[k] for k, v in cpu1.items()}
                    end_started = time.monotonic()
                    plan.may_end.set()
                report["end_all_s"] = round(time.monotonic() - end_started, 2)
                report["leftovers"] = await settle(view, pool_pid, data_dir, args.grace_s)
                final = await anyio.to_thread.run_sync(
                    memory_sample, "after_end", time.monotonic() - t0, procs
                )
                final["pool_sessions"] = await view.sessions()
                samples.append(final)
                tg.cancel_scope.cancel()
    soak_wall = args.minutes * 60
    report.update(
        {
            "calls": dict(stats.calls),
            "errors": dict(stats.errors),
            "error_examples": stats.examples,
            "first_call_ms": summary_ms(stats.first_call_s) if stats.first_call_s else {},
            "end_session_ms": summary_ms(stats.end_session_s) if stats.end_session_s else {},
            "latency_by_bucket": latency_buckets(stats),
            "cpu_s_during_soak": {k: round(v, 1) for k, v in soak_cpu.items()},
            "soak_rate_calls_per_s": round(
                sum(len(v) for b in stats.buckets.values() for v in b.values()) / soak_wall, 2
            ),
            "memory": samples,
        }
    )
    return report


def latency_buckets(stats: Stats) -> list[dict[str, Any]]:
    rows = []
    for bucket in sorted(stats.buckets):
        tools = stats.buckets[bucket]
        every = [s for v in tools.values() for s in v]
        row: dict[str, Any] = {
            "bucket": bucket,
            "from_s": round(bucket * stats.bucket_s),
            "all": summary_ms(every),
        }
        if tools.get("run_python"):
            row["run_python"] = summary_ms(tools["run_python"])
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ the report
def derive(report: dict[str, Any], sessions: int) -> dict[str, Any]:
    """Drifts and verdicts from the raw report."""
    mem = {s["label"]: s for s in report["memory"] if s["label"] != "soak"}
    base, ramp, end, after = mem["baseline"], mem["after_ramp"], mem["end_of_soak"], mem["after_end"]
    rows = report["latency_by_bucket"]
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    left = report["leftovers"]
    n_left = (
        left["pool_sessions"]
        + left["bwrap_beyond_warm"]
        + left["session_dirs_beyond_warm"]
        + len(left["cgroups"])
    )
    return {
        "errors_total": sum(report["errors"].values()),
        "leftovers_total": n_left,
        "latency_drift_p50": ratio(last, first, "p50_ms"),
        "latency_drift_p95": ratio(last, first, "p95_ms"),
        "bridge_rss_drift_kib": end["bridge_rss_kib"] - ramp["bridge_rss_kib"],
        "pool_rss_drift_kib": end["pool_rss_kib"] - ramp["pool_rss_kib"],
        "sandbox_pss_drift_kib_per_session": round(
            (end["sandbox_pss_kib"] - ramp["sandbox_pss_kib"]) / sessions, 1
        ),
        "sandbox_pss_kib_per_session": round(
            (ramp["sandbox_pss_kib"] - base["sandbox_pss_kib"])
            / max(1, ramp["sandboxes"] - base["sandboxes"]),
            1,
        ),
        "processes_back_to_baseline": after["pool_processes"] == base["pool_processes"],
        "bridge_rss_after_end_vs_baseline_kib": after["bridge_rss_kib"] - base["bridge_rss_kib"],
        "pool_rss_after_end_vs_baseline_kib": after["pool_rss_kib"] - base["pool_rss_kib"],
        "sandbox_pss_after_end_vs_baseline_kib": after["sandbox_pss_kib"] - base["sandbox_pss_kib"],
    }


def ratio(last: dict[str, Any], first: dict[str, Any], key: str) -> float | None:
    if not first or "run_python" not in first or "run_python" not in last:
        return None
    return round(float(last["run_python"][key]) / float(first["run_python"][key]), 2)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def table(report: dict[str, Any], config: dict[str, Any]) -> str:
    d = report["derived"]
    mem = {s["label"]: s for s in report["memory"] if s["label"] != "soak"}
    left = report["leftovers"]
    calls = report["calls"]
    lines = [
        f"bounded soak: {config['sessions']} sessions ({config['auto_sessions']} on the 2026 era), "
        f"{config['minutes'] * 60:.0f} s at full concurrency, target {config['rate']:g} run_python calls/s "
        f"(think {config['think_s']:.1f} s)",
        "-" * 100,
        f"{'calls':<34}{sum(calls.values())} ({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))})",
        f"{'errors':<34}{d['errors_total']:<40}{verdict(d['errors_total'] == 0)}",
    ]
    lines += [
        f"{'':<34}{k}: {v} e.g. {report['error_examples'][k][:120]}" for k, v in report["errors"].items()
    ]
    fc, es = report["first_call_ms"], report["end_session_ms"]
    lines += [
        f"{'session ramp-up':<34}{report['ramp_s']} s for {config['sessions']} sessions "
        f"(first call p50 {fc.get('p50_ms')} ms, p95 {fc.get('p95_ms')} ms; "
        f"admitted {config['admit']} at a time; warm pool refilled {report['warm_refill_s']} s later)",
        f"{'soak call rate':<34}{report['soak_rate_calls_per_s']} calls/s; CPU s during soak "
        + ", ".join(f"{k} {v}" for k, v in report["cpu_s_during_soak"].items())
        + f" (of {config['cpus']} cores x {config['minutes'] * 60:.0f} s)",
    ]
    for row in report["latency_by_bucket"]:
        rp = row.get("run_python", {})
        lines.append(
            f"{'  latency from ' + str(row['from_s']) + ' s':<34}run_python p50 {rp.get('p50_ms')} ms "
            f"p95 {rp.get('p95_ms')} ms (n {rp.get('n')}); all tools p50 {row['all']['p50_ms']} "
            f"p95 {row['all']['p95_ms']} (n {row['all']['n']})"
        )
    lines += [
        f"{'latency drift (last/first bucket)':<34}run_python p50 x{d['latency_drift_p50']}, "
        f"p95 x{d['latency_drift_p95']}",
        f"{'end_session':<34}p50 {es.get('p50_ms')} ms, p95 {es.get('p95_ms')} ms; all clients done in "
        f"{report['end_all_s']} s",
        f"{'memory':<34}{'baseline':>12}{'after ramp':>14}{'end of soak':>14}{'after end':>12}",
    ]
    for key, name in (
        ("bridge_rss_kib", "bridge RSS"),
        ("pool_rss_kib", "pool server RSS"),
        ("sandbox_rss_kib", "sandboxes RSS"),
        ("sandbox_pss_kib", "sandboxes PSS"),
    ):
        values = [mib(mem[label][key]) for label in ("baseline", "after_ramp", "end_of_soak", "after_end")]
        lines.append(f"{'  ' + name:<34}{values[0]:>12}{values[1]:>14}{values[2]:>14}{values[3]:>12}")
    t_from, t_to = mem["after_ramp"]["t_s"], mem["end_of_soak"]["t_s"]
    trend = sorted((s for s in report["memory"] if t_from <= s["t_s"] <= t_to), key=lambda s: s["t_s"])
    for key, name in (("bridge_rss_kib", "bridge RSS"), ("sandbox_pss_kib", "sandboxes PSS")):
        lines.append(f"{'  ' + name + ' trend (MiB)':<34}" + " ".join(f"{s[key] / 1024:.0f}" for s in trend))
    for key, name in (
        ("pool_processes", "pool processes"),
        ("sandboxes", "sandboxes (bwrap)"),
        ("http_conns", "pool server HTTP connections"),
        ("other_fds", "pool server other fds"),
        ("pool_threads", "pool server threads"),
    ):
        values = [str(mem[label][key]) for label in ("baseline", "after_ramp", "end_of_soak", "after_end")]
        lines.append(f"{'  ' + name:<34}{values[0]:>12}{values[1]:>14}{values[2]:>14}{values[3]:>12}")
    lines += [
        f"{'memory drift (end vs after ramp)':<34}bridge {d['bridge_rss_drift_kib']:+d} KiB, pool server "
        f"{d['pool_rss_drift_kib']:+d} KiB, sandboxes {d['sandbox_pss_drift_kib_per_session']:+} KiB PSS per "
        f"session over {config['minutes'] * 60:.0f} s "
        f"(a session costs {mib(d['sandbox_pss_kib_per_session'])} PSS)",
        f"{'leftovers after end':<34}{d['leftovers_total']:<40}{verdict(d['leftovers_total'] == 0)}",
        f"{'':<34}listSessions {left['pool_sessions']}, bwrap beyond warm {left['bwrap_beyond_warm']}, "
        f"dirs beyond warm {left['session_dirs_beyond_warm']}, cgroups {len(left['cgroups'])} "
        f"(warm kernels {left['warm_kernels']}; {left['sandboxes_tracked']} session sandboxes tracked; "
        f"checked after {left['settled_after_s']} s)",
        f"{'pool processes back to baseline':<34}"
        f"{str(mem['baseline']['pool_processes']) + ' -> ' + str(mem['after_end']['pool_processes']):<40}"
        f"{verdict(d['processes_back_to_baseline'])}",
        f"{'after end vs baseline':<34}bridge RSS {d['bridge_rss_after_end_vs_baseline_kib']:+d} KiB, "
        f"pool server RSS {d['pool_rss_after_end_vs_baseline_kib']:+d} KiB, sandboxes PSS "
        f"{d['sandbox_pss_after_end_vs_baseline_kib']:+d} KiB",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=3.0, help="soak length at full concurrency")
    parser.add_argument("--rate", type=float, default=10.0, help="target run_python calls/s over all clients")
    parser.add_argument("--files-every", type=int, default=5, help="a file round every Nth iteration")
    parser.add_argument("--auto-share", type=float, default=0.25, help="share of clients on the 2026 era")
    parser.add_argument("--admit", type=int, default=8, help="new sessions admitted at once")
    parser.add_argument("--warm", type=int, default=2, help="the pool's warm kernels")
    parser.add_argument("--sample-s", type=float, default=10.0, help="memory sampling period")
    parser.add_argument("--bucket-s", type=float, default=60.0, help="latency bucket length")
    parser.add_argument("--grace-s", type=float, default=15.0, help="wait this long for cleanup")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 sessions, 20 s")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.minutes, args.bucket_s, args.sample_s = 10, 20 / 60, 10.0, 5.0
    config = {
        "sessions": args.sessions,
        "auto_sessions": round(args.sessions * args.auto_share),
        "minutes": args.minutes,
        "rate": args.rate,
        "think_s": args.sessions / args.rate,
        "files_every": args.files_every,
        "admit": args.admit,
        "warm": args.warm,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="dsmcp-soak-") as tmp:
        data_dir, log = Path(tmp) / "data", Path(tmp) / "pool.log"
        data_dir.mkdir()
        # Room for every session plus the warm kernels and a margin: capacity is not under test.
        with soak_pool(args.sessions + args.warm + 8, args.warm, data_dir, log) as (url, pool_pid):
            report = anyio.run(soak, args, url, pool_pid, data_dir)
        pool_log = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    report["config"] = config
    report["derived"] = derive(report, args.sessions)
    report["pool_log_lines"] = len(pool_log)
    report["pool_log_tail"] = pool_log[-20:]
    print(table(report, config))
    if pool_log:
        print(f"pool log ({len(pool_log)} lines at WARNING and above), last lines:")
        print("\n".join("  " + line[:200] for line in pool_log[-10:]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
