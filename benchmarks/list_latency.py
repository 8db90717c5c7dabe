"""`hub list` over a large synthetic catalog: cold start side by side with `hf --help`, and query time.

Cold (default): fresh processes (each pays its imports), interleaved: every round runs each command
once, in a rotated order, so load from other processes hits all of them alike; the ratio to
huggingface_hub's `hf --help` (the peer that sets the bar: no slower) is taken per round, and the
median of those is printed.

--query-only: in this process, each listing on the SQLite read path (hubtool/registry/fastlist.py):
the first run (SQLite's page cache empty, the file in the OS cache) and the median of the next ones,
with EXPLAIN QUERY PLAN of every step it may run.

Usage:
  .venv/bin/python benchmarks/list_latency.py [--n 100000] [--rounds 7]
  .venv/bin/python benchmarks/list_latency.py --n 1000000 --query-only [--normal]
The catalog is kept in --workdir (default /tmp/hub-bench) and reused by later runs of the same --n.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bulk import fill_synthetic  # benchmarks/bulk.py, beside this script

from hubtool.registry import fastlist

# (label, arguments of `hub list`), one per filter and option
LISTINGS = [
    ("--task task7", ["--task", "task7"]),
    ("--task task7 --json", ["--task", "task7", "--json"]),
    ("--tasks task3,task4", ["--tasks", "task3,task4"]),
    ("--base smollm2-135m", ["--base", "smollm2-135m"]),
    ("--kind lora", ["--kind", "lora"]),
    ("--tag synthetic", ["--tag", "synthetic"]),
    ("--where 'rougeL>=40' --sort -rougeL", ["--where", "rougeL>=40", "--sort", "-rougeL"]),
    ("--where 'task=task7, loss<1.5' --limit 100", ["--where", "task=task7, loss<1.5", "--limit", "100"]),
    ("--sort -created --limit 10 --json", ["--sort", "-created", "--limit", "10", "--json"]),
]
# the same listings as Reader.list arguments, plus a few more for --query-only
QUERIES = [
    ("--task task7", {"task": "task7"}),
    ("--tasks task3,task4", {"tasks": ["task3", "task4"]}),
    ("--base smollm2-135m", {"base": "smollm2-135m"}),
    ("--kind lora", {"kind": "lora"}),
    ("--tag synthetic", {"tag": "synthetic"}),
    ("--where 'rougeL>=40'", {"where": "rougeL>=40"}),
    ("--where 'rougeL>=49.99'", {"where": "rougeL>=49.99"}),
    ("--where task=task7", {"where": "task=task7"}),
    ("--where 'rougeL>=40' --sort -rougeL", {"where": "rougeL>=40", "sort": "-rougeL"}),
    ("--task task7 --sort -rougeL", {"task": "task7", "sort": "-rougeL"}),
    ("--base smollm2-135m --kind lora --sort loss", {"base": "smollm2-135m", "kind": "lora", "sort": "loss"}),
    ("--where 'task=task7, loss<1.5' --limit 100", {"where": "task=task7, loss<1.5", "limit": 100}),
    ("--sort -created --limit 10", {"sort": "-created", "limit": 10}),
    ("(no filter)", {}),
]


def catalog(workdir: Path, n: int) -> tuple[str, float | None]:
    """A filled catalog of n experts in workdir (made once; None: reused)."""
    path = workdir / f"list-{n}.db"
    url = f"sqlite:///{path}"
    if path.is_file():
        try:
            with sqlite3.connect(path) as conn:
                rows = conn.execute("SELECT count(*) FROM experts").fetchone()[0]
            if rows == n and fastlist.open_reader(url) is not None:
                return url, None
        except sqlite3.Error:
            pass
        for p in workdir.glob(f"list-{n}.db*"):
            p.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fill_synthetic(url, n)
    return url, time.perf_counter() - t0


def cold(url: str, home: str, rounds: int) -> None:
    bindir = Path(sys.executable).parent
    hub, hf = str(bindir / "hub"), shutil.which("hf", path=str(bindir)) or "hf"
    env = dict(os.environ, HUB_HOME=home, COLUMNS="120")
    env.pop("HUB_CATALOG", None)
    commands = [("hf --help (huggingface_hub, the peer)", [hf, "--help"]), ("hub --help", [hub, "--help"])]
    commands += [(f"hub list {label}", [hub, "list", *args, "--catalog", url]) for label, args in LISTINGS]
    for _, argv in commands:  # warm-up: page cache, .pyc files
        subprocess.run(argv, check=True, capture_output=True, env=env)
    times: dict[str, list[float]] = {label: [] for label, _ in commands}
    for r in range(rounds):
        order = commands[r % len(commands) :] + commands[: r % len(commands)]
        for label, argv in order:
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env=env)
            times[label].append(time.perf_counter() - t0)
    peer = times[commands[0][0]]
    print(f"{'command':<58} {'median s':>9} {'vs hf --help':>13} {'worst round':>12}")
    for label, _ in commands:
        ratios = [t / p for t, p in zip(times[label], peer)]
        print(
            f"{label:<58} {statistics.median(times[label]):>9.3f} "
            f"{statistics.median(ratios):>12.2f}x {max(ratios):>11.2f}x"
        )
    worst = max(
        statistics.median([t / p for t, p in zip(times[f"hub list {lb}"], peer)]) for lb, _ in LISTINGS
    )
    print(
        f"\nslowest `hub list` / `hf --help` (median of per-round ratios): {worst:.2f}x (goal <= 1.00x: "
        f"{'met' if worst <= 1.0 else 'NOT met'})"
    )


def query_only(url: str, repeat: int, normal: bool) -> None:
    reader = fastlist.open_reader(url)
    assert reader is not None, f"{url}: not on the read path"
    rows = []
    for label, kw in QUERIES:
        kw = {"limit": 25, **kw}
        t0 = time.perf_counter()
        first = reader.list(**kw)
        t_first = time.perf_counter() - t0
        again = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            reader.list(**kw)
            again.append(time.perf_counter() - t0)
        t_normal = None
        if normal:  # the SQLAlchemy path (Catalog.list) on the same catalog, for comparison
            from hubtool.registry import Catalog

            with Catalog(url) as cat:
                cat.list(limit=1)
                t0 = time.perf_counter()
                slow = cat.list(**kw)
                t_normal = time.perf_counter() - t0
            assert slow == first, f"{label}: Catalog.list differs"
        rows.append((label, len(first), t_first, statistics.median(again), t_normal))
        print(f"\n{label}  ({len(first)} rows)")
        for i, step in enumerate(reader.plan(**kw)):
            budget = (
                "runs to the end"
                if step.budget is None
                else f"budget {step.budget:,} VM steps, then the next"
            )
            print(f"  step {i + 1} ({budget})")
            if step.walk:
                for line in reader.conn.execute("EXPLAIN QUERY PLAN " + step.walk, step.walk_params):
                    print(f"    walk: {line[3]}")
            for line in reader.conn.execute("EXPLAIN QUERY PLAN " + step.sql, step.params):
                print(f"    {line[3]}")
    print(
        f"\n{'listing (limit 25 unless given)':<48} {'rows':>5} {'first ms':>9} {'median ms':>10}"
        + (f" {'Catalog.list ms':>16}" if normal else "")
    )
    for label, n, t_first, t_med, t_normal in rows:
        extra = f" {t_normal * 1000:>16.1f}" if t_normal is not None else ""
        print(f"{label:<48} {n:>5} {t_first * 1000:>9.1f} {t_med * 1000:>10.1f}{extra}")
    worst = max(max(r[2], r[3]) for r in rows)
    print(
        f"\nslowest listing: {worst * 1000:.1f} ms (goal <= 100 ms: {'met' if worst <= 0.1 else 'NOT met'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="experts in the catalog")
    ap.add_argument("--rounds", type=int, default=7, help="cold: interleaved rounds")
    ap.add_argument("--query-only", action="store_true", help="time the queries in-process, print EXPLAIN")
    ap.add_argument("--repeat", type=int, default=5, help="--query-only: runs after the first")
    ap.add_argument("--normal", action="store_true", help="--query-only: also time Catalog.list (SQLAlchemy)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hub-bench"))
    args = ap.parse_args()

    url, fill_s = catalog(args.workdir, args.n)
    made = "reused" if fill_s is None else f"filled in {fill_s:.1f} s"
    print(
        f"catalog: {args.n:,} experts ({made}); {url}; CPU x{os.cpu_count()}; load {os.getloadavg()[0]:.1f}"
    )
    if args.query_only:
        query_only(url, args.repeat, args.normal)
    else:
        print(f"cold: {args.rounds} interleaved rounds of fresh processes\n")
        home = str(args.workdir / "home")
        cold(url, home, args.rounds)


if __name__ == "__main__":
    main()
