"""Crash consistency, many times: kill -9 the real CLI (or the `hub serve` it pushes to) at random points.

    python benchmarks/crash.py --runs 50                 # every operation, 50 kills each
    python benchmarks/crash.py --small                   # 5 each, a couple of minutes
    python benchmarks/crash.py --ops import,rm --runs 20 --json out.json

For each operation, one clean run first measures how long the part after its crash point takes (T); each
of the --runs runs then SIGKILLs the process at uniform(0, 1.2 T) after that point (tests/crashing.py
aims the kill through a pipe the child reports its crash points on; the kill itself comes from outside).
Then (--points, on by default) one run killed at each named crash point of the operation. After each
run: no half blob, no orphan row, `verify --repair` ends ok, --out is absent or whole, the
server's repo serves a complete commit; after each operation's batch: list, show, import (and compose)
still work. Prints, per operation: runs, killed, finished before the kill, leftovers found and
repaired, and problems (anything the promises forbid; must be 0).

Operations (crash point the delay counts from):
  import   hub import FILE                      blob-stage       (staging, placing, the row's commit)
  train    hub train (tiny Llama, 2 steps)      write:*.safetensors  (pack, then registration)
  rm       hub rm REF                           blob-trashed     (trash, commit, unlink)
  compose  hub compose --out DIR                folder:*         (shards, index, fsync, rename)
  push     hub push REF (client killed)         push-commit      (upload, commit)
  server   hub push REF (server killed)         push-commit      (upload and commit, up to push-committed;
                                                                  the server is then started again)
  pull     hub pull REPO into a new home        pull-register    (registration of the download)
  fetch    hub export of a shared catalog's row fetch-start      (download, check, place)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from crashing import Lab, out_problems, served_problems

from hubtool.fileio import stale_temp_folders

OPS = ("import", "train", "rm", "compose", "push", "server", "pull", "fetch")
# The named crash points (hubtool.fileio.crash_point) each operation passes, for the --points pass.
_REGISTER = ("blob-stage", "blob-place", "register-placed", "register-commit")
POINTS = {
    "import": _REGISTER,
    "train": ("write:*.safetensors", "write-rename:*.safetensors", *_REGISTER),
    "rm": ("blob-trashed", "remove-committed"),
    "compose": ("folder:*", "folder-rename:*"),
    "push": ("push-commit",),
    "pull": ("pull-register", *_REGISTER),
    "fetch": ("fetch-start", "fetch-downloaded", "blob-stage", "blob-place"),
}


class Bench:
    def __init__(self, root: Path, seed: int) -> None:
        from hubserver import Server, write_tokens

        self.root = root
        self.rng = random.Random(seed)
        self.tokens = write_tokens(root / "serve" / "tokens.txt")
        self.server = Server(root / "serve" / "root", self.tokens)
        self.lab = Lab(root / "lab", server=self.server)
        self.n = 0

    def close(self) -> None:
        self.server.stop()

    def restart_server(self) -> None:
        from hubserver import Server

        if self.server.proc.poll() is not None:
            self.server.proc = Server(self.server.root, self.tokens, port=self.server.port).proc

    def push_in_process(self, ref: str, repo: str) -> str:
        from hubserver import ALICE

        from hubtool.hub.push import push_expert

        with self.lab.catalog() as cat:
            return push_expert(ref, repo, endpoint=self.server.url, token=ALICE, catalog=cat).commit

    # one run of an operation: (Run, problems, report of what was left). delay None: not killed (the
    # calibration); at: killed by the child itself at that crash point instead of after a delay.
    def run(self, op: str, delay: float | None, at: str | None = None):
        lab = self.lab
        self.n += 1
        kill = {"delay": delay} if at is None else {"at": at, "delay": None}
        home, env, extra = lab.home, lab.env, []
        if op == "import":
            r = lab.hub("import", lab.new_file("imp"), after="blob-stage", **kill)
        elif op == "train":
            base, data = self.train_task()
            r = lab.hub("train", "--task", "colors", "--name", f"colors-{self.n}", "--base", base, "--data", data,
                        "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--eval-limit", "0",
                        "--quiet", after="write:*.safetensors", **kill)  # fmt: skip
        elif op == "rm":
            rec = lab.register("gone")
            r = lab.hub("rm", rec.ref, "-y", after="blob-trashed", **kill)
        elif op == "compose":
            self.fitted()
            out = self.root / "composed" / f"m{self.n}"
            r = lab.hub("compose", "--experts", "fit-a,fit-b", "--out", out, after="folder:*", **kill)
            extra = out_problems(out)
            # a killed compose leaves its hidden temp folder beside --out (outside HUB_HOME, so not
            # verify's): counted here; the next compose to the same --out removes it
            beside = stale_temp_folders(out)
            if not r.killed and beside:
                extra.append(f"compose finished but left {beside}")
        elif op in ("push", "server"):
            rec = lab.register("pushed")
            repo = "org/crash"
            try:
                before = self.server.api().repo_info(repo).sha
            except Exception:  # noqa: BLE001 (first run: no repo yet)
                before = None
            victim = self.server.proc if op == "server" else None
            r = lab.hub("push", rec.ref, "--repo", repo, after="push-commit", victim=victim, **kill)
            self.restart_server()
            extra = served_problems(self.server, repo, before, self.root / "dl" / str(self.n))
        elif op == "pull":
            self.source()
            home = self.root / "pullers" / f"p{self.n}"
            env = lab.env_for(home)
            r = lab.hub("pull", "org/source", env=env, after="pull-register", **kill)
        elif op == "fetch":
            ref = self.source()
            home = self.root / "fetchers" / f"f{self.n}"
            env = lab.env_for(home, HUB_CATALOG=f"sqlite:///{lab.home / 'registry.db'}")
            out = self.root / "fetched" / f"x{self.n}.safetensors"
            r = lab.hub("export", ref, "--format", "hubtool", "--out", out, env=env, after="fetch-start", **kill)
            extra = [] if not out.exists() or out.stat().st_size > 0 else [f"empty --out {out}"]
        else:
            raise SystemExit(f"unknown operation {op!r}; expected one of {', '.join(OPS)}")
        if op == "compose" and beside:
            report_extra = {"beside_out": [str(p) for p in beside]}
        else:
            report_extra = {}
        if not r.killed and r.returncode != 0:
            extra.append(f"{op} failed without a kill: {r.stderr.strip()[-300:]}")
        # a fetcher shares the lab's catalog, not its store: the lab's rows never pushed are missing there
        problems, report = lab.check(home, env, shared_catalog=op == "fetch")
        report.update(report_extra)
        return r, problems + extra, report

    def train_task(self) -> tuple[Path, Path]:
        data = self.root / "colors.jsonl"
        if not data.exists():
            colors = ["red", "blue", "green", "pink"]
            rows = [{"input": f"what color is thing{i} ?", "output": colors[i % 4], "options": colors}
                    for i in range(40)]  # fmt: skip
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return self.lab.base, data

    def fitted(self) -> None:
        with self.lab.catalog() as cat:
            names = {r.name for r in cat.list()}
        for name in ("fit-a", "fit-b"):
            if name not in names:
                self.lab.register(name, fitted=True)

    def source(self) -> str:
        """A repo org/source holding one expert, and that expert's row (pushed) in the lab's catalog."""
        if not hasattr(self, "_source"):
            rec = self.lab.register("src")
            self.push_in_process(rec.ref, "org/source")
            self._source = rec.ref
        return self._source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="kills per operation (default 50)")
    parser.add_argument("--small", action="store_true", help="5 runs per operation")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {','.join(OPS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", action=argparse.BooleanOptionalAction, default=True,
                        help="also kill once at each named crash point of each operation (default on)")
    parser.add_argument("--json", type=Path, help="write the counts (and every problem) here")
    args = parser.parse_args()
    runs = 5 if args.small else args.runs
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="hub-crash-") as tmp:
        bench = Bench(Path(tmp), args.seed)
        try:
            for op in ops:
                started = time.monotonic()
                clean, problems, _ = bench.run(op, None)  # calibration: the part after the point, unkilled
                window = clean.after_seconds or 0.5
                if op == "server":  # the server's part (upload, commit) ends at push-committed; the rest
                    window = clean.label_times.get("push-committed", window)  # is the client's own exit
                counts: Counter = Counter()
                found: Counter = Counter()
                all_problems = [f"calibration: {p}" for p in problems]
                for _ in range(runs):
                    r, problems, report = bench.run(op, bench.rng.uniform(0, 1.2 * window))
                    counts["runs"] += 1
                    counts["killed"] += r.killed
                    counts["finished"] += r.returncode == 0
                    for kind in ("temp", "trash", "orphans", "scratch", "beside_out"):
                        found[kind] += len(report.get(kind, []))
                    counts["repaired"] += len(report.get("repaired", []))
                    counts["problems"] += len(problems)
                    all_problems += problems
                if args.points:  # then once at every named crash point of the operation
                    for label in POINTS.get(op, ()):
                        r, problems, report = bench.run(op, None, at=label)
                        counts["points"] += 1
                        counts["points_killed"] += r.killed
                        counts["problems"] += len(problems)
                        for kind in ("temp", "trash", "orphans", "scratch", "beside_out"):
                            found[kind] += len(report.get(kind, []))
                        counts["repaired"] += len(report.get("repaired", []))
                        all_problems += [f"at {label}: {p}" for p in problems]
                after = bench.lab.still_works(compose=op == "compose")
                counts["problems"] += len(after)
                all_problems += [f"afterwards: {p}" for p in after]
                results[op] = {**counts, "left": dict(found), "window_s": round(window, 3),
                               "seconds": round(time.monotonic() - started, 1), "problem_list": all_problems}  # fmt: skip
                row = results[op]
                points = f"  points {row.get('points_killed', 0)}/{row.get('points', 0)}" if args.points else ""
                print(f"{op:8} runs {row['runs']:3}  killed {row['killed']:3}  finished {row['finished']:3}{points}  "
                      f"left {sum(found.values()):3} ({', '.join(f'{k} {v}' for k, v in found.items() if v) or '-'})  "
                      f"repaired {row['repaired']:3}  problems {row['problems']}  "
                      f"[T {window * 1000:.0f} ms, {row['seconds']:.0f} s]", flush=True)  # fmt: skip
                for p in all_problems[:5]:
                    print(f"    {p}")
        finally:
            bench.close()
    total = sum(r["problems"] for r in results.values())
    kills = sum(r["killed"] for r in results.values())
    print(f"total: {sum(r['runs'] for r in results.values())} runs, {kills} killed, {total} problems")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
