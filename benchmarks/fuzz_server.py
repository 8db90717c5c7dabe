"""Request fuzzing of `hub serve` at full size: 10,000 mutated requests (tests/fuzz_server.py).

    .venv/bin/python benchmarks/fuzz_server.py [--cases 10000] [--seed 0] [--small] [--workdir DIR] [--keep]

One real `hub serve` subprocess (--max-commit-gib 1/1024 so that over-cap bodies stay cheap; a failed-auth
limit high enough that bad-token cases get 401s). Prints cases by kind and by status, the failures (goal 0:
no 5xx, no non-JSON error, no hang, no dropped connection), tracebacks in the server's log (goal 0), RSS
at 20% and at the end (growth: goal < 64 MiB), the slowest answer, and the root check (nothing written
outside --root, no symlinks, every committed path valid).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_server import Fuzzer
from hubserver import Server, write_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="300 cases (the test's size)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.small:
        args.cases = 300
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hub-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    srv = Server(
        work / "root",
        write_tokens(work / "tokens.txt"),
        "--max-commit-gib",
        str(1 / 1024),
        "--auth-burst",
        "100000",
    )
    t0 = time.perf_counter()
    try:
        fuzz = Fuzzer(srv, seed=args.seed, timeout=30)
        fuzz.setup()

        def progress(index, case, status):
            if (index + 1) % 1000 == 0:
                print(f"  {index + 1} cases, {time.perf_counter() - t0:.0f} s", flush=True)

        report = fuzz.run(args.cases, on_case=progress)
        log_problems = fuzz.log_problems()
        root_problems = fuzz.check_root({"tokens.txt", "hub-home"})
        alive = srv.proc.poll() is None
    finally:
        srv.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nbenchmarks/fuzz_server.py --cases {args.cases} --seed {args.seed}: {report.cases} cases in "
        f"{report.seconds:.1f} s ({report.cases / report.seconds:.0f}/s), slowest answer {report.slowest:.2f} s"
    )
    print("by kind:   " + ", ".join(f"{k} {n}" for k, n in sorted(report.by_kind.items())))
    print("accepted:  " + ", ".join(f"{k} {n}" for k, n in sorted(report.accepted.items())))
    print(
        "by status: "
        + ", ".join(f"{s} {n}" for s, n in sorted(report.by_status.items()))
        + "   (-2: connection closed by the server on malformed HTTP)"
    )
    growth = (report.rss_end_kib - report.rss_start_kib) / 1024
    print(
        f"server RSS: {report.rss_start_kib / 1024:.0f} MiB at 20% -> {report.rss_end_kib / 1024:.0f} MiB at the end "
        f"(growth {growth:+.1f} MiB, goal < 64)"
    )
    print(
        f"failures: {len(report.failures)} (goal 0); tracebacks/500s in the server log: {len(log_problems)} (goal 0); "
        f"root problems: {len(root_problems)} (goal 0); server alive: {alive}"
    )
    for failure in report.failures[:20]:
        print("  ", failure)
    for line in (log_problems + root_problems)[:20]:
        print("  ", line)
    if report.failures or log_problems or root_problems or not alive or growth >= 64:
        sys.exit(1)


if __name__ == "__main__":
    main()
