"""Many writers at once: P processes x K registrations into one fresh catalog while `hub list` readers run
the whole time, on SQLite and on PostgreSQL (a throw-away server from tests/postgres.py).

Each writer (a process forked from a forkserver that imported torch and hubtool) registers K files: odd ones under the shared name "shared", even ones under its own name
"pN", and its first file is the same bytes in every process, registered under the name in the file,
"common" (dedup under contention). Writers start
together (a barrier) on a catalog nobody has created yet, so the schema creation
races too. Readers loop `hub list --json` (the real CLI) and check every snapshot: each name's versions
must be 1..k without a hole (versions are handed out under the write lock, in commit order).

Prints per database: rows (expected P*K), gaps (missing or doubled versions), errors (writers' and
readers'), reads (listings done meanwhile), seconds (barrier to last writer done), verify (blob store).

Usage: python benchmarks/concurrency.py [--processes 8] [--per-process 50] [--readers 2] [--db sqlite,postgres]
       python benchmarks/concurrency.py --small        (8 x 6, what tests/test_concurrency.py runs)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest.write_sparse_expert, postgres (the throw-away server)

HUB = [sys.executable, "-m", "hubtool"]
SHARED = "shared"


def gaps(versions_by_name: dict[str, list[int]]) -> int:
    """Missing or repeated version numbers, over all names (0 when each name has exactly 1..max)."""
    out = 0
    for versions in versions_by_name.values():
        out += max(versions) - len(set(versions)) + (len(versions) - len(set(versions)))
    return out


def _by_name(rows: list[tuple[str, int]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for name, version in rows:
        found[name].append(version)
    return found


def _writer(url: str, blobs: str, files: list[str], barrier, results) -> None:  # type: ignore[no-untyped-def]
    """A spawned process: import everything, wait for the others, then open and register, all at once."""
    import hubtool.format.packed  # noqa: F401  (torch: imported before the race, not during)
    from hubtool.registry import Catalog

    barrier.wait(timeout=600)
    refs, errors = [], []
    try:
        catalog = Catalog(url, blobs=Path(blobs))
        for i, path in enumerate(files):
            try:
                refs.append(catalog.register(path, name=SHARED if i % 2 else None, tags=[f"t{i}"]).ref)
            except Exception as err:  # noqa: BLE001  (counted, not raised: the benchmark reports every error)
                errors.append(f"{Path(path).name}: {type(err).__name__}: {err}")
        catalog.close()
    except Exception as err:  # noqa: BLE001
        errors.append(f"opening: {type(err).__name__}: {err}")
    results.put((refs, errors))


def _reader(url: str, stop: threading.Event, log: dict[str, list]) -> None:
    """Loop the real `hub list --json` until the writers are done (at least once); every snapshot must
    be gapless."""
    env = {k: v for k, v in os.environ.items() if k != "HUB_CATALOG"}
    while True:
        done = subprocess.run(
            [*HUB, "list", "--catalog", url, "--json", "--limit", "1000000"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        log["reads"].append(1)
        if done.returncode != 0:
            log["errors"].append(f"hub list exit {done.returncode}: {done.stderr.strip()[-300:]}")
        else:
            rows = [(r["name"], r["version"]) for r in json.loads(done.stdout)]
            if rows and gaps(_by_name(rows)):
                log["errors"].append(f"hub list saw a snapshot with gaps: {sorted(rows)}")
        if stop.is_set():
            return


def make_files(folder: Path, processes: int, per_process: int) -> list[list[str]]:
    from conftest import write_sparse_expert

    folder.mkdir(parents=True, exist_ok=True)
    common = write_sparse_expert(folder / "common.safetensors", name="common", seed=999_999)
    jobs = []
    for p in range(processes):
        files = [str(common)]  # every process registers it as "common": same bytes, one blob
        for i in range(1, per_process):
            path = folder / f"p{p}-{i}.safetensors"
            files.append(str(write_sparse_expert(path, name=f"p{p}", seed=1000 * p + i)))
        jobs.append(files)
    return jobs


def many_writers(url: str, blobs: Path, jobs: list[list[str]], readers: int = 2) -> dict:
    """Run the writers (one process per list of files) and the readers; what they left, counted."""
    from hubtool.registry import Catalog

    # forkserver: one server process imports torch and hubtool once and forks every writer from there,
    # instead of P fresh interpreters importing torch on a shared CPU (tens of seconds on 2 cores).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["hubtool.format.packed", "hubtool.registry.catalog", "concurrency"])
    barrier, results = ctx.Barrier(len(jobs) + 1), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, str(blobs), files, barrier, results)) for files in jobs]
    for p in procs:
        p.start()
    log: dict[str, list] = {"reads": [], "errors": []}
    stop = threading.Event()
    barrier.wait(timeout=600)
    start = time.perf_counter()
    threads = [threading.Thread(target=_reader, args=(url, stop, log)) for _ in range(readers)]
    for t in threads:
        t.start()
    refs, errors = [], []
    try:
        for _ in procs:
            got_refs, got_errors = results.get(timeout=1200)
            refs += got_refs
            errors += got_errors
        seconds = time.perf_counter() - start
    finally:
        stop.set()
        for t in threads:
            t.join()
        for p in procs:
            p.join(timeout=60)
    with Catalog(url, blobs=blobs) as catalog:
        rows = catalog.list()
        report = catalog.verify()
    return {
        "rows": len(rows),
        "expected": sum(len(files) for files in jobs),
        "refs": refs,
        "unique_refs": len(set(refs)),
        "gaps": gaps(_by_name([(r.name, r.version) for r in rows])),
        "errors": errors + log["errors"],
        "reads": len(log["reads"]),
        "seconds": seconds,
        "verify_ok": report.ok,
        "blobs": report.checked,
        "records": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--per-process", type=int, default=50)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--small", action="store_true", help="8 x 6, the test's size")
    args = ap.parse_args()
    if args.small:
        args.processes, args.per_process = 8, 6
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory(prefix="hub-concurrency-") as tmp:
        work = Path(tmp)
        jobs = make_files(work / "files", args.processes, args.per_process)
        print(
            f"{args.processes} writer processes x {args.per_process} registrations, {args.readers} `hub list` "
            "readers looping meanwhile"
        )
        print(
            f"{'db':<10} {'rows':>6} {'expected':>8} {'gaps':>5} {'errors':>6} {'reads':>6} {'seconds':>8} verify"
        )
        for db in args.db.split(","):
            server = None
            if db == "sqlite":
                url = f"sqlite:///{work / 'sqlite' / 'registry.db'}"
            else:
                import postgres

                server = postgres.start()
                url = server.create_database()
            try:
                out = many_writers(url, work / db / "blobs", jobs, readers=args.readers)
            finally:
                if server is not None:
                    server.stop()
            print(
                f"{db:<10} {out['rows']:>6} {out['expected']:>8} {out['gaps']:>5} {len(out['errors']):>6} "
                f"{out['reads']:>6} {out['seconds']:>8.1f} {'ok' if out['verify_ok'] else 'FAILED'}"
            )
            for err in out["errors"][:5]:
                print(f"  error: {err}")


if __name__ == "__main__":
    main()
