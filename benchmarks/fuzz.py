"""The big file-fuzz run: N cases from tests/fuzzing.py through the real `hub` entry point, in-process.

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py --cases 10000 --seed 1
    OMP_NUM_THREADS=1 python benchmarks/fuzz.py --small            # 500 cases, a couple of minutes

Prints per class: cases, accepted (exit 0), clean errors (exit 1, one `Error:` line), contract breaks
(exit 2 internal errors, tracebacks, hangs: must be 0), the slowest case, and the process's RSS growth
after a warm-up (the first 5% of cases, or 50). Exits 1 if anything broke the contract, listing the
first breaks (class, mutation, message) so they can be replayed with the same --seed.
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzzing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--small", action="store_true", help="500 cases")
    ap.add_argument("--classes", default=None, help=f"comma list of {', '.join(fuzzing.GENERATORS)}")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    args = ap.parse_args()
    n = 500 if args.small else args.cases
    classes = args.classes.split(",") if args.classes else None

    with tempfile.TemporaryDirectory(prefix="hub-fuzz-") as tmp:
        start = time.perf_counter()
        world = fuzzing.World.build(Path(tmp))
        print(f"world built in {time.perf_counter() - start:.1f} s; {n} cases, seed {args.seed}", flush=True)
        stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        slowest: dict[str, tuple[float, str]] = {}
        breaks: list[tuple[str, str, str]] = []
        warmup = max(50, n // 20)
        rss_after_warmup = None
        run_start = time.perf_counter()
        for i, case in enumerate(fuzzing.cases(args.seed, n, classes)):
            outcome = fuzzing.run_case(world, case, timeout=args.timeout)
            s = stats[case.cls]
            s["cases"] += 1
            if not outcome.ok:
                s["broken"] += 1
                breaks.append((case.cls, case.what, outcome.error or ""))
            elif outcome.code == 0:
                s["accepted"] += 1
            else:
                s["clean errors"] += 1
            if outcome.seconds > slowest.get(case.cls, (0.0, ""))[0]:
                slowest[case.cls] = (outcome.seconds, case.what)
            if i + 1 == warmup:
                gc.collect()
                rss_after_warmup = fuzzing.rss_bytes()
            if (i + 1) % 500 == 0:
                print(f"  {i + 1}/{n} cases, {len(breaks)} breaks, {time.perf_counter() - run_start:.0f} s", flush=True)
        gc.collect()
        rss_end = fuzzing.rss_bytes()

    print(f"\n{'class':<10} {'cases':>6} {'accepted':>9} {'clean err':>9} {'broken':>7} {'max s':>7}  slowest case")
    total: collections.Counter = collections.Counter()
    for cls in sorted(stats):
        s = stats[cls]
        total.update(s)
        t, what = slowest[cls]
        print(f"{cls:<10} {s['cases']:>6} {s['accepted']:>9} {s['clean errors']:>9} {s['broken']:>7} {t:>7.2f}  {what[:40]}")
    print(f"{'all':<10} {total['cases']:>6} {total['accepted']:>9} {total['clean errors']:>9} {total['broken']:>7} "
          f"{max(t for t, _ in slowest.values()):>7.2f}")
    growth = None if rss_after_warmup is None else (rss_end - rss_after_warmup) / 2**20
    print(f"\n{time.perf_counter() - run_start:.0f} s for {n} cases; RSS {rss_end / 2**20:.0f} MiB at the end"
          + ("" if growth is None else f", {growth:+.0f} MiB since case {warmup}"))
    for cls, what, error in breaks[:20]:
        print(f"BROKEN {cls} {what}: {error[:300]}")
    return 1 if breaks else 0


if __name__ == "__main__":
    sys.exit(main())
