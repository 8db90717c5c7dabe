"""`hub serve` under load: 32 concurrent hf_hub_download calls and 4 concurrent HfApi.upload_file pushes.

    .venv/bin/python benchmarks/hub_load.py [--workdir /tmp/hub-bench-serve] [--download-mib 16]
        [--downloads 256] [--concurrency 32] [--push-mib 8] [--pushes 32] [--pushers 4]
        [--time-limit 180] [--quick] [--keep] [--server-pythonpath DIRS]

One `hub serve` subprocess on 127.0.0.1; the clients are the real huggingface_hub (progress bars off: 32 bars
at once are noise; otherwise default settings): the downloads are threads of this process, each pusher is its
own client process (threads of one process would queue behind its GIL while they base64-encode). Phases, one
after the other:
  downloads   --concurrency threads, each hf_hub_download(repo, "model.safetensors", cache_dir=<its own>)
              of one --download-mib safetensors (random bf16) until --downloads calls are done; every
              downloaded file's sha256 is checked against the source (after the call, outside its latency),
              then its cache folder is deleted so the next call downloads again
  pushes      --pushers client processes, HfApi.upload_file of a new --push-mib file each (distinct
              content, no dedupe), --pushes calls in all, started together after their imports; "4 repos":
              one repo per client; "1 repo": all clients push to the same repo and branch (no parentCommit:
              the server applies the commits one after the other on the newest head)
  mixed       downloads and pushes (4 repos) at the same time
Every phase stops by itself: at its call count, or at --time-limit seconds (calls then in flight finish;
the client's own timeouts bound each). Latency = wall time of one call (a download is HEAD + GET, a push is
preupload + commit). After the pushes every pushed file is downloaded again and its sha256 checked.
Reported: calls/s, MiB/s, p50/p99 latency, errors (goal: 0), the server's HTTP requests/s (access log),
server CPU and peak RSS. Everything under --workdir is deleted at the end (unless --keep).

    .venv/bin/python benchmarks/hub_load.py --churn [--concurrency 32] [--pushers 4] [--time-limit 60]
        [--churn-kib 1024] [--small]

--churn runs the other load instead (tests/load_churn.py; tests/test_serve_load.py is its small size):
--concurrency download threads and --pushers push threads on ONE repo while another client deletes and
recreates it (delete_repo, create_repo, upload_file; 0.3 s pause) for --time-limit seconds. Every
download must hash to a version pushed in some complete commit (wrong bytes: goal 0) or fail with a
clean huggingface_hub HTTP error (unclean errors: goal 0); the server must stay up with no traceback in
its log, and its store at rest must hold no half commit. Printed: HTTP requests (access log), calls and
errors by kind, wrong bytes, p50/p99 latency per kind, seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hub_common import (
    TOKEN,
    Server,
    check_disk,
    command_line,
    make_safetensors,
    pct,
    sha256_file,
    stamp,
)


class Phase:
    """Calls of one kind: latencies, bytes, errors; thread-safe."""

    def __init__(self, name: str) -> None:
        self.name, self.lat, self.errors, self.nbytes = name, [], [], 0
        self.lock = threading.Lock()
        self.start = self.end = 0.0

    def ok(self, seconds: float, nbytes: int) -> None:
        with self.lock:
            self.lat.append(seconds)
            self.nbytes += nbytes

    def fail(self, err: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{type(err).__name__}: {str(err)[:200]}")

    def row(self) -> str:
        wall = self.end - self.start
        n = len(self.lat)
        return (f"{self.name:<28} {n:>6} {len(self.errors):>6} {wall:>7.1f} {n / wall:>8.2f} "
                f"{self.nbytes / 2**20 / wall:>8.0f} {1000 * pct(self.lat, 0.5):>8.0f} {1000 * pct(self.lat, 0.99):>8.0f} "
                f"{1000 * max(self.lat, default=float('nan')):>8.0f}")


HEADER = (f"{'phase':<28} {'calls':>6} {'errors':>6} {'wall s':>7} {'calls/s':>8} {'MiB/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8}")


def run_downloads(phase: Phase, srv: Server, repo: str, want: str, size: int, total: int, threads: int,
                  deadline: float, workdir: Path) -> None:
    from huggingface_hub import hf_hub_download

    counter = iter(range(total))
    lock = threading.Lock()

    def worker(k: int) -> None:
        cache = workdir / f"dl-cache-{phase.name.split()[0]}-{k}"
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    return
            t0 = time.perf_counter()
            try:
                got = hf_hub_download(repo, "model.safetensors", cache_dir=cache, endpoint=srv.url, token=TOKEN)
                seconds = time.perf_counter() - t0
                if os.path.getsize(got) != size or sha256_file(got) != want:
                    raise RuntimeError("downloaded bytes differ from the source")
                phase.ok(seconds, size)
            except Exception as err:  # noqa: BLE001 (every failure is counted and reported)
                phase.fail(err)
            finally:
                shutil.rmtree(cache, ignore_errors=True)

    phase.start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    phase.end = time.perf_counter()


def run_pushes(phase: Phase, srv: Server, repos: list[str], files: list[Path], clients: int, deadline: float,
               pushed: list, workdir: Path) -> None:
    """`clients` client processes (each its own interpreter, as separate users' uploads are; threads of one
    process would queue behind one GIL while they base64-encode), files dealt round-robin; client k pushes
    to repos[k % len(repos)]. They start together (after their imports) and stop at `deadline`."""
    import json
    import subprocess

    env = srv.client_env(workdir / "push-clients")
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    start = time.time() + 5.0  # time for the clients' imports
    wall_deadline = start + (deadline - time.monotonic())
    procs = []
    for k in range(clients):
        mine = [str(f) for f in files[k::clients]]
        cmd = [sys.executable, str(Path(__file__).parent / "hub_common.py"), "push-many", repos[k % len(repos)],
               str(start), str(wall_deadline), *mine]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    ends = []
    for proc in procs:
        out, _ = proc.communicate(timeout=max(60.0, wall_deadline - time.time() + 600))
        if proc.returncode != 0:
            phase.fail(RuntimeError(f"push client exited {proc.returncode}"))
            continue
        res = json.loads(out.decode().strip().splitlines()[-1])
        for seconds in res["lat"]:
            phase.lat.append(seconds)
        phase.nbytes += res["bytes"]
        phase.errors += res["errors"]
        pushed += [tuple(item) for item in res["pushed"]]
        ends.append(res["end"])
    phase.start, phase.end = 0.0, max(ends, default=start) - start


def verify_pushes(srv: Server, pushed: list, workdir: Path) -> int:
    """Download every pushed file again (not timed): its sha256 must be the source's. -> files checked."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=srv.url, token=TOKEN)
    for repo in sorted({r for r, _, _ in pushed}):
        listed = set(api.list_repo_files(repo))
        missing = [p for r, p, _ in pushed if r == repo and p not in listed]
        if missing:
            raise SystemExit(f"{repo}: pushed files missing from the repo: {missing[:5]}")
    cache = workdir / "verify-cache"
    for repo, path_in_repo, src in pushed:
        got = hf_hub_download(repo, path_in_repo, cache_dir=cache, endpoint=srv.url, token=TOKEN)
        if sha256_file(got) != sha256_file(src):
            raise SystemExit(f"{repo}/{path_in_repo}: downloaded bytes differ from the pushed file")
        shutil.rmtree(cache)
    return len(pushed)


def logged_requests(srv: Server) -> int:
    """How many requests the server's access log holds so far."""
    return sum(1 for line in srv.log.read_text(errors="replace").splitlines() if " 127.0.0.1 " in line
               and line.endswith("ms"))


def push_files(workdir: Path, tag: str, n: int, mib: int) -> list[Path]:
    base = workdir / "push-src" / "base.safetensors"
    make_safetensors(base, mib, seed=7)
    out = []
    for i in range(n):
        path = workdir / "push-src" / tag / f"shard-{i:04d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base, path)
        stamp(path, (sum(tag.encode()) << 32) | (i + 1))
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hub-bench-serve"))
    ap.add_argument("--download-mib", type=int, default=16)
    ap.add_argument("--downloads", type=int, default=256, help="download calls per download phase")
    ap.add_argument("--concurrency", type=int, default=32, help="download threads")
    ap.add_argument("--push-mib", type=int, default=8)
    ap.add_argument("--pushes", type=int, default=32, help="push calls per push phase")
    ap.add_argument("--pushers", type=int, default=4, help="push client processes")
    ap.add_argument("--time-limit", type=float, default=180, help="seconds per phase at most")
    ap.add_argument("--quick", action="store_true", help="2 MiB downloads x 64, 1 MiB pushes x 8")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--server-pythonpath", default=None,
                    help="put in front of the server's PYTHONPATH (an older source tree, optional speed-ups)")
    ap.add_argument("--churn", action="store_true", help="downloads + pushes while the repo is deleted/recreated")
    ap.add_argument("--churn-kib", type=int, default=1024, help="file size of the --churn load")
    ap.add_argument("--small", action="store_true", help="with --churn: the test's size (8 threads, 12 s)")
    args = ap.parse_args()
    if args.churn:
        return run_churn(args)
    if args.quick:
        args.download_mib, args.downloads, args.push_mib, args.pushes = 2, 64, 1, 8
    workdir = args.workdir.absolute()
    phases_push = 3  # pushes (4 repos), pushes (1 repo), mixed
    need = ((args.download_mib + 1) * (args.concurrency + 2) + 3 * (args.push_mib + 1) * args.pushes * phases_push) << 20
    check_disk(workdir, need)
    os.environ.update(HF_HOME=str(workdir / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    for key in [k for k in os.environ if k.startswith("HF_") and k not in ("HF_HOME", "HF_HUB_DISABLE_PROGRESS_BARS")]:
        del os.environ[key]
    import huggingface_hub
    from huggingface_hub import HfApi

    started = time.perf_counter()
    phases: list[Phase] = []
    try:
        src = workdir / "src" / "model.safetensors"
        size = make_safetensors(src, args.download_mib, seed=3)
        want = sha256_file(src)
        files = {tag: push_files(workdir, tag, args.pushes, args.push_mib) for tag in ("p4", "p1", "mix")}
        srv = Server(workdir, "root-load", pythonpath=args.server_pythonpath)
        try:
            api = HfApi(endpoint=srv.url, token=TOKEN)
            api.create_repo("bench/load-src")
            api.upload_file(path_or_fileobj=str(src), path_in_repo="model.safetensors", repo_id="bench/load-src")
            repos4 = [f"bench/load-push-{k}" for k in range(args.pushers)]
            for repo in [*repos4, "bench/load-one", *[f"bench/load-mix-{k}" for k in range(args.pushers)]]:
                api.create_repo(repo)
            print(f"client: huggingface_hub {huggingface_hub.__version__} (threads of this process); "
                  f"server speed-ups loaded: {srv.modules()}")
            pushed: list = []
            cpu = {}

            def timed(name, fn, idle=0.0):  # idle: seconds at the start spent waiting for client imports
                t0, c0, n0 = time.perf_counter(), srv.cpu_seconds(), logged_requests(srv)
                fn()
                cpu[name] = (srv.cpu_seconds() - c0, logged_requests(srv) - n0, time.perf_counter() - t0 - idle)

            dl = Phase(f"downloads x{args.concurrency}")
            timed(dl.name, lambda: run_downloads(dl, srv, "bench/load-src", want, size, args.downloads,
                                                 args.concurrency, time.monotonic() + args.time_limit, workdir))
            phases.append(dl)
            p4 = Phase(f"pushes x{args.pushers}, {args.pushers} repos")
            timed(p4.name, lambda: run_pushes(p4, srv, repos4, files["p4"], args.pushers,
                                              time.monotonic() + args.time_limit, pushed, workdir), 5.0)
            phases.append(p4)
            p1 = Phase(f"pushes x{args.pushers}, 1 repo")
            timed(p1.name, lambda: run_pushes(p1, srv, ["bench/load-one"], files["p1"], args.pushers,
                                              time.monotonic() + args.time_limit, pushed, workdir), 5.0)
            phases.append(p1)
            mix_dl = Phase(f"mixed: downloads x{args.concurrency}")
            mix_push = Phase(f"mixed: pushes x{args.pushers}")

            def mixed():
                deadline = time.monotonic() + args.time_limit
                t = threading.Thread(target=run_pushes, args=(mix_push, srv, [f"bench/load-mix-{k}" for k in
                                     range(args.pushers)], files["mix"], args.pushers, deadline, pushed, workdir))
                t.start()
                time.sleep(5.0)  # the push clients start after their imports
                run_downloads(mix_dl, srv, "bench/load-src", want, size, args.downloads, args.concurrency, deadline,
                              workdir)
                t.join()

            timed("mixed", mixed, 5.0)
            phases += [mix_dl, mix_push]
            verified = verify_pushes(srv, pushed, workdir)
            hwm = srv.vmhwm_kib()
            commits_one = len(api.list_repo_commits("bench/load-one"))
        finally:
            srv.stop()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(command_line())
    print(f"hub serve on 127.0.0.1, huggingface_hub {huggingface_hub.__version__}; downloads: {size / 2**20:.0f} MiB "
          f"safetensors, {args.downloads} calls per phase on {args.concurrency} threads, each its own cache dir; "
          f"pushes: {args.push_mib} MiB files, {args.pushes} calls per phase from {args.pushers} client processes; "
          f"wall {time.perf_counter() - started:.0f} s")
    print(HEADER)
    for p in phases:
        print(p.row())
    print()
    for name, (cpu_s, reqs, wall) in cpu.items():
        print(f"server during {name:<24}: {reqs:>5} HTTP requests, {reqs / wall:7.1f} req/s, CPU {cpu_s:6.1f} s "
              f"({100 * cpu_s / wall:.0f}% of one core)")
    print(f"server peak RSS (VmHWM) after all phases: {hwm / 1024:.0f} MiB")
    errors = sum(len(p.errors) for p in phases)
    print(f"verified: every download's sha256 == source ({sum(len(p.lat) for p in phases if 'download' in p.name)} "
          f"downloads); all {verified} pushed files listed and downloaded back byte-identical; 1-repo phase made "
          f"{commits_one - 1} commits on main (one per push)")
    print(f"errors: {errors} (goal 0)")
    for p in phases:
        for e in p.errors[:5]:
            print(f"  {p.name}: {e}")
    if errors:
        sys.exit(1)


def run_churn(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import huggingface_hub
    from hubserver import Server as TestServer
    from hubserver import write_tokens
    from load_churn import check_store, churn, percentile

    if args.small:
        args.concurrency, args.pushers, args.time_limit, args.churn_kib = 8, 4, 12, 256
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    srv = TestServer(workdir / "root-churn", write_tokens(workdir / "tokens.txt"))
    try:
        res = churn(srv, downloads=args.concurrency, pushers=args.pushers, seconds=args.time_limit,
                    file_kib=args.churn_kib, workdir=workdir / "clients")
        alive = srv.proc.poll() is None
        log = srv.log.read_text(errors="replace")
    finally:
        srv.stop()
    problems = check_store(srv.root)
    requests = sum(1 for line in log.splitlines() if " 127.0.0.1 " in line and line.endswith("ms"))
    tracebacks = log.count("Traceback")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(command_line())
    print(f"hub serve churn, huggingface_hub {huggingface_hub.__version__}: {args.concurrency} download threads, "
          f"{args.pushers} push threads, 1 deleter/recreator, {args.churn_kib} KiB file, {res.seconds:.1f} s")
    print(f"HTTP requests served: {requests} ({requests / res.seconds:.0f}/s); delete+recreate cycles: {res.cycles}")
    print(f"{'kind':<10} {'ok calls':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind in ("download", "push", "churn"):
        lat = res.latencies[kind]
        print(f"{kind:<10} {res.calls[kind]:>8} {1000 * percentile(lat, 0.5):>8.0f} {1000 * percentile(lat, 0.99):>8.0f}")
    print("clean errors by kind: " + (", ".join(f"{k} {n}" for k, n in sorted(res.errors.items())) or "none"))
    print(f"wrong bytes: {res.wrong_bytes} (goal 0); unclean errors: {len(res.unclean)} (goal 0); "
          f"tracebacks in the server log: {tracebacks} (goal 0); server alive at the end: {alive}; "
          f"store problems at rest: {len(problems)} (goal 0)")
    for item in res.unclean[:10] + problems[:10]:
        print("  ", item)
    if res.wrong_bytes or res.unclean or tracebacks or not alive or problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
