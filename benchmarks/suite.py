"""Every benchmark, one after the other, then the issue's targets side by side in one table.

    .venv/bin/python benchmarks/suite.py [--quick] [--only scale files ...] [--json out.json]

Each benchmark runs as its own process (its table is printed as it finishes) and writes JSON;
the suite gathers them into one file (default benchmarks/results/suite-<time>.json). The
benchmarks share this machine's cores, so run the suite on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["local_pool", "bridge", "scale", "files", "credential", "soak"]

Row = tuple[str, str, str]  # what, measured, target and verdict


def row(what: str, measured: str, target: str = "", ok: bool | None = None) -> Row:
    verdict = "" if ok is None else (" ok" if ok else " MISSED")
    return what, measured, f"[{target}]{verdict}" if target else ""


def _local_pool(r: dict[str, Any]) -> list[Row]:
    first, warm, cold, memory = (
        r["first_call_ms"],
        r["warm_execute_ms"],
        r["cold_start_ms"],
        r["idle_memory_bare"],
    )
    return [
        row("local pool: new identifier -> result", f"{first['p50']} ms p50", "<= 25 ms", first["p50"] <= 25),
        row("local pool: warm execute 6*7", f"{warm['p50']} ms p50", "<= 10 ms", warm["p50"] <= 10),
        row("local pool: cold start", f"{cold['p50']} ms p50", "<= 1 s", cold["p50"] <= 1000),
        row(
            "local pool: idle sandboxes per GiB",
            f"{memory['sandboxes_per_gib']} ({memory['pss_mib']} MiB PSS)",
        ),
    ]


def _bridge(r: dict[str, Any]) -> list[Row]:
    rows = []
    for key in ("stdio", "http_legacy", "http_auto"):
        x = r[key]
        parts = f"{x['bridge']['p50_ms']} - {x['floor']['p50_ms']} - {x['direct_rest']['p50_ms']}"
        measured = f"{x['overhead_ms']} ms (bridge - floor - REST: {parts})"
        rows.append(row(f"bridge overhead p50, {key}", measured, "<= 1 ms", x["overhead_ms"] <= 1))
    return rows


def _scale(r: dict[str, Any]) -> list[Row]:
    rows = []
    for level in r["levels"]:
        noop, run = level["noop"], level["run_python"]
        cpu = f"{run['server_cpu_ms_per_call']} vs {noop['server_cpu_ms_per_call']} ms"
        rates = f"{run['calls_per_s']} vs {noop['calls_per_s']}/s = {level['ratio']}"
        measured = f"{rates} (p95 {run['p95_ms']} ms; CPU {cpu})"
        what = f"{level['clients']} clients: run_python vs no-op"
        rows.append(row(what, measured, ">= 0.9", level["ratio"] >= 0.9))
    for w in r.get("workers", []):
        rows.append(
            row(
                f"{w['workers']} worker(s), {w['clients']} clients", f"{w['calls_per_s']}/s (x{w['speedup']})"
            )
        )
    if "idle_memory" in r:
        idle = r["idle_memory"]
        mb_per_1000 = idle["growth_mib"] * 1.048576 * 1000 / idle["clients"]
        measured = f"+{idle['growth_mib']} MiB ({idle['kib_per_client']} KiB each)"
        rows.append(row(f"{idle['clients']} idle clients", measured, "1,000 < 100 MB", mb_per_1000 < 100))
    return rows


def _files(r: dict[str, Any]) -> list[Row]:
    rows = []
    for g in r["groups"]:
        growth = max(g["peak_growth_up_mib"], g["peak_growth_down_mib"])
        measured = f"up {g['up_mib_s']} / down {g['down_mib_s']} MiB/s, peak +{growth} MiB"
        what = f"files {g['path']} {g['size_mib']:g} MiB"
        big = g["size_mib"] >= 100
        rows.append(row(what, measured, "<= 30 MB" if big else "", growth * 1.048576 <= 30 if big else None))
    return rows


def _credential(r: dict[str, Any]) -> list[Row]:
    rows = []
    for key in ("hour_tokens", "short_tokens"):
        x = r[key]
        measured = f"{x['fetches']} per {x['calls']} calls (expected {x['expected']}, errors {x['errors']})"
        rows.append(
            row(f"Entra token fetches, {x['lifetime_s']:g} s tokens", measured, "one per lifetime", x["ok"])
        )
    return rows


def _soak(r: dict[str, Any]) -> list[Row]:
    d, sessions = r["derived"], r["config"]["sessions"]
    calls, errors = sum(r["calls"].values()), d["errors_total"]
    drift = f"p50 x{d['latency_drift_p50']}, p95 x{d['latency_drift_p95']}"
    memory = f"pool +{d['pool_rss_drift_kib']} KiB, bridge +{d['bridge_rss_drift_kib']} KiB"
    return [
        row(f"soak, {sessions} sessions: errors", f"{errors} in {calls} calls", "0", errors == 0),
        row("soak: latency drift (last/first minute)", drift),
        row("soak: memory drift over the soak", memory),
        row("soak: sandboxes left over", str(d["leftovers_total"]), "0", d["leftovers_total"] == 0),
    ]


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "local_pool": _local_pool,
    "bridge": _bridge,
    "scale": _scale,
    "files": _files,
    "credential": _credential,
    "soak": _soak,
}


def run(name: str, quick: bool, workdir: Path) -> dict[str, Any] | None:
    out = workdir / f"{name}.json"
    argv = [
        sys.executable,
        str(HERE / f"bench_{name}.py"),
        "--json",
        str(out),
        *(["--quick"] if quick else []),
    ]
    print(f"\n=== bench_{name} ===", flush=True)
    started = time.monotonic()
    done = subprocess.run([*argv, *(["--quick"] if quick else [])], check=False)
    print(f"(bench_{name}: {time.monotonic() - started:.0f} s, exit {done.returncode})", flush=True)
    if done.returncode != 0 or not out.exists():
        return None
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every benchmark's smoke run")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            reports[name] = run(name, args.quick, Path(tmp))
    rows: list[Row] = []
    for name, report in reports.items():
        rows += SUMMARIES[name](report) if report else [row(f"bench_{name}", "FAILED (see its output)")]
    width = max(len(r[0]) for r in rows)
    print("\n=== targets ===")
    for what, measured, target in rows:
        print(f"{what:<{width}}  {measured}  {target}")
    path = args.json or HERE / "results" / f"suite-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"quick": args.quick, "reports": reports}, indent=2) + "\n")
    print(f"\nJSON: {path}")
    if any(report is None for report in reports.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
