"""`hub serve` push and pull of a 300 MiB model with the real huggingface_hub client, against `cp`.

    .venv/bin/python benchmarks/hub_throughput.py [--workdir /tmp/hub-bench-serve] [--mib 300] [--rounds 3]
                                                  [--rss-mib 30,300] [--folder-mib 1024]
                                                  [--client-rss-mib 100,1000,2000] [--quick | --small] [--keep]
                                                  [--server-pythonpath DIRS]

The model: a real safetensors file of random bf16 tensors (torch.randn * 0.02, [<=1920, 4096] each), built
under --workdir. Every round stamps 8 new bytes into its first tensor, so each push is new content (the
server cannot deduplicate it) and goes to a new repo.

Measured in one run, interleaved round by round (the order rotates), page cache warmed by reading the source:
  cp     `cp SRC DST` on the same disk (wall; the copy's fsync is timed apart: the server fsyncs, cp does not)
  push   HfApi().upload_file(path_or_fileobj=SRC, path_in_repo="model.safetensors", repo_id=...) in a fresh
         client process, default settings (hf_xet installed: preupload answers `lfs`, so the file goes through
         Xet, the server's CAS under /_xet; the commit carries only its sha256)
  pull   hf_hub_download(repo, "model.safetensors", cache_dir=<fresh>) in a fresh client process; sha256 of
         the downloaded file checked against the source
Times are taken in the client process around the call (imports excluded). The server's own time per
request comes from its access log (preupload, commit, LFS PUT, resolve GET). Goals (issue 7): push and pull
each >= 0.5 x cp throughput.

Where the time goes, in the same rounds (each in a fresh process too):
  client alone   the client's CPU work of a regular upload with no server: CommitOperationAdd (sha256, sample)
                 and the NDJSON body as huggingface_hub's _send_commit builds it (base64, json.dumps, join)
  push via LFS   upload_file through the LFS basic transfer (raw PUT to a signed URL), the path of clients
                 < 1.20: huggingface_hub 2.x given an hf_hub/1.19 user agent and HF_HUB_DISABLE_XET=1 (not a
                 default setting; the file is stamped anew first, or the batch API would skip it)
  GET socket     the pulled file read into memory over a plain socket (no HTTP library): the server alone
  GET httpx      httpx2 stream + iter_raw, no file: the client's HTTP stack alone

--server-pythonpath DIRS (os.pathsep-separated) goes in front of the server's PYTHONPATH: an older source
tree for before/after (`git archive <commit> hubtool | tar -x -C DIR`) and/or a `pip install --target`
folder with optional speed-ups (pybase64).

Then the server's peak RSS (VmHWM of /proc/<pid>/status) in a fresh server: idle, after a push + pull of
--rss-mib[0] MiB, after a push + pull of --rss-mib[1] MiB. Goal: flat within 64 MiB.

Then Xet (issue 17), on a fresh server, each client call in a fresh process, default settings:
  ceiling        hf_xet.hash_files on the same file (chunking + hashing, no upload): the client's own limit
  push file      upload_file of the --mib file; goal >= 0.8 x the ceiling
  push folder    upload_folder of a --folder-mib model folder (safetensors shards of <= 512 MiB); its ceiling
                 is hash_files over the folder's files
  client RSS     peak RSS (VmHWM) of the pushing process for each --client-rss-mib size; goal: no growth
                 with the file size. hf_xet holds the xorbs it has in flight (64 MiB each), so its RSS
                 rises with the file until its upload pipeline is full, then stays flat: the goal is judged
                 between the two largest sizes (growth <= 64 MiB, one xorb)
  dedup          a "merged" copy of the folder (the first tensor of each shard rewritten, the rest as it
                 was) pushed to another repo after it: xorb bytes the server received (GET /_xet/stats) and
                 the bytes it stored, against the changed tensors' size; goal <= changed + 64 MiB
  pull           hf_hub_download of the pushed file through Xet (reconstruction + signed xorb ranges), and
                 with HF_HUB_DISABLE_XET=1 (a plain GET /resolve the server reconstructs)
--small: 30 MiB file, 60 MiB folder, client RSS at 10 and 30 MiB, one round (a check of the script, not
numbers). Everything under --workdir is deleted at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hub_common import (
    TOKEN,
    Server,
    check_disk,
    command_line,
    fsync_file,
    make_safetensors,
    median,
    read_through,
    run_worker,
    sha256_file,
    stamp,
)


def mibs(nbytes: int, seconds: float) -> float:
    return nbytes / 2**20 / seconds


def push_pull(srv: Server, workdir: Path, src: Path, repo: str, tag: str) -> dict:
    """One push then one pull of `src` into a new repo; both verified. -> seconds and client peaks."""
    api = srv.api()
    api.create_repo(repo)
    env = srv.client_env(workdir / "client")
    log = workdir / "client.log"
    want = sha256_file(src)
    read_through(src)
    push = run_worker(["push", repo, str(src), "model.safetensors"], env, timeout=900, log=log)
    cache = workdir / f"cache-{tag}"
    pull = run_worker(["pull", repo, "model.safetensors", str(cache)], env, timeout=900, log=log)
    got = Path(pull["path"])
    if got.stat().st_size != src.stat().st_size or sha256_file(got) != want:
        raise SystemExit(f"pull of {repo}: the downloaded file differs from the source")
    shutil.rmtree(cache)
    return {"push": push["seconds"], "pull": pull["seconds"], "push_rss": push["vmhwm_kib"],
            "pull_rss": pull["vmhwm_kib"]}


def xet_stats(srv: Server) -> dict:
    import httpx2

    r = httpx2.get(f"{srv.url}/_xet/stats", headers={"authorization": f"Bearer {TOKEN}"})
    r.raise_for_status()
    return r.json()


def make_folder(folder: Path, mib: int, seed: int) -> list[Path]:
    """A model folder: config.json + safetensors shards of <= 512 MiB of random bf16 tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    shards, left, i = [], mib, 0
    while left > 0:
        part = min(left, 512)
        path = folder / f"model-{i:05d}.safetensors"
        make_safetensors(path, part, seed=seed + i)
        shards.append(path)
        left, i = left - part, i + 1
    return shards


def rewrite_first_tensor(path: Path, seed: int) -> int:
    """Overwrite the data of the file's first tensor with new random bytes (layout unchanged); its size."""
    import random

    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        first = min((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
        start, end = first["data_offsets"]
        f.seek(8 + n + start)
        f.write(random.Random(seed).randbytes(end - start))
    return end - start


def xet_section(workdir: Path, args, mib: int, folder_mib: int, client_mibs: tuple[int, ...]) -> dict:
    """The Xet measurements (see the module docstring), on a fresh server."""
    out: dict = {}
    log = workdir / "client-xet.log"
    src = workdir / "src-xet" / "model.safetensors"
    out["size"] = make_safetensors(src, mib, seed=101)
    folder = workdir / "src-folder"
    shards = make_folder(folder, folder_mib, seed=201)
    out["folder_size"] = sum(p.stat().st_size for p in shards)
    rss_files = {}
    for m in client_mibs:
        rss_files[m] = workdir / f"src-client-{m}" / "model.safetensors"
        make_safetensors(rss_files[m], m, seed=300 + m)
    srv = Server(workdir, "root-xet", pythonpath=args.server_pythonpath)
    try:
        env = srv.client_env(workdir / "client-xet")
        api = srv.api()
        read_through(src)
        out["hash"] = run_worker(["hash-files", str(src)], env, timeout=900, log=log)["seconds"]
        api.create_repo("bench/xet-file")
        push = run_worker(["push", "bench/xet-file", str(src), "model.safetensors"], env, timeout=900, log=log)
        out["push"], out["push_rss"] = push["seconds"], push["vmhwm_kib"]
        for p in shards:
            read_through(p)
        out["hash_folder"] = run_worker(["hash-files", *map(str, shards)], env, timeout=900, log=log)["seconds"]
        api.create_repo("bench/xet-folder")
        out["push_folder"] = run_worker(["push-folder", "bench/xet-folder", str(folder)], env, timeout=1800,
                                        log=log)["seconds"]  # fmt: skip
        out["client_rss"] = {}
        for m, path in rss_files.items():
            api.create_repo(f"bench/xet-rss-{m}")
            res = run_worker(["push", f"bench/xet-rss-{m}", str(path), "model.safetensors"], env, timeout=900,
                             log=log)  # fmt: skip
            out["client_rss"][m] = res["vmhwm_kib"]
        # dedup: the merged folder after its base
        merged = workdir / "src-merged"
        shutil.copytree(folder, merged)
        out["changed"] = sum(rewrite_first_tensor(p, seed=400 + i) for i, p in enumerate(sorted(merged.glob("*.safetensors"))))
        before = xet_stats(srv)
        api.create_repo("bench/xet-merged")
        out["push_merged"] = run_worker(["push-folder", "bench/xet-merged", str(merged)], env, timeout=1800,
                                        log=log)["seconds"]  # fmt: skip
        after = xet_stats(srv)
        out["sent"] = after["received_bytes"] - before["received_bytes"]
        out["sent_data"] = after["received_data_bytes"] - before["received_data_bytes"]
        out["stored"] = after["stored_bytes"] - before["stored_bytes"]
        # pulls: through Xet, and plain GET (Xet disabled in the client)
        want = sha256_file(src)
        for key, extra in (("pull_xet", {}), ("pull_get", {"HF_HUB_DISABLE_XET": "1"})):
            cache = workdir / f"cache-{key}"
            res = run_worker(["pull", "bench/xet-file", "model.safetensors", str(cache)], {**env, **extra},
                             timeout=900, log=log)  # fmt: skip
            if sha256_file(Path(res["path"])) != want:
                raise SystemExit(f"{key}: the downloaded file differs from the source")
            out[key] = res["seconds"]
            shutil.rmtree(cache)
        out["server_hwm"] = srv.vmhwm_kib()
    finally:
        srv.stop()
    return out


def print_xet(x: dict) -> None:
    size, fsize = x["size"], x["folder_size"]
    print()
    print(f"Xet: default client (hf_xet), fresh server; {size / 2**20:.0f} MiB file, {fsize / 2**20:.0f} MiB folder")
    print(f"{'operation':<66} {'s':>7} {'MiB/s':>8} {'x ceil':>6}")
    print(f"{'ceiling: hf_xet.hash_files, file':<66} {x['hash']:>7.3f} {mibs(size, x['hash']):>8.0f} {1:>6.2f}")
    print(f"{'push file: upload_file':<66} {x['push']:>7.3f} {mibs(size, x['push']):>8.0f} "
          f"{x['hash'] / x['push']:>6.2f}")
    print(f"{'ceiling: hf_xet.hash_files, folder':<66} {x['hash_folder']:>7.3f} "
          f"{mibs(fsize, x['hash_folder']):>8.0f} {1:>6.2f}")
    print(f"{'push folder: upload_folder':<66} {x['push_folder']:>7.3f} {mibs(fsize, x['push_folder']):>8.0f} "
          f"{x['hash_folder'] / x['push_folder']:>6.2f}")
    print(f"{'pull file: hf_hub_download through Xet':<66} {x['pull_xet']:>7.3f} {mibs(size, x['pull_xet']):>8.0f}")
    print(f"{'pull file: hf_hub_download, HF_HUB_DISABLE_XET=1 (plain GET)':<66} {x['pull_get']:>7.3f} "
          f"{mibs(size, x['pull_get']):>8.0f}")
    ratio = min(x["hash"] / x["push"], x["hash_folder"] / x["push_folder"])
    print(f"goal push >= 0.8 x hash_files: {'met' if ratio >= 0.8 else 'NOT met'} ({ratio:.2f})")
    rss = x["client_rss"]
    sizes = sorted(rss.items())
    shown = ", ".join(f"{m} MiB file {r / 1024:.0f} MiB" for m, r in sizes)
    print(f"client peak RSS (push, VmHWM): {shown}; {size / 2**20:.0f} MiB file {x['push_rss'] / 1024:.0f} MiB")
    if len(sizes) >= 2:
        (m1, r1), (m2, r2) = sizes[-2:]
        grew = (r2 - r1) / 1024
        print(f"goal client RSS flat from {m1} to {m2} MiB (growth <= 64 MiB): "
              f"{'met' if grew <= 64 else 'NOT met'} ({grew:+.0f} MiB)")
    changed = x["changed"]
    print(f"dedup: merged folder after its base ({x['push_merged']:.3f} s): changed tensors {changed / 2**20:.1f} MiB, "
          f"sent {x['sent'] / 2**20:.1f} MiB of xorbs ({x['sent_data'] / 2**20:.1f} MiB of data), stored "
          f"{x['stored'] / 2**20:.1f} MiB; goal sent <= changed + 64 MiB: "
          f"{'met' if x['sent'] <= changed + (64 << 20) else 'NOT met'}")
    print(f"server peak RSS (VmHWM) after the Xet runs: {x['server_hwm'] / 1024:.1f} MiB")


def time_cp(src: Path, workdir: Path, reps: int = 3) -> tuple[float, float]:
    """Median of `reps` x (cp SRC DST, then fsync DST timed apart); the copy is deleted after each."""
    dst = workdir / "cp" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    read_through(src)
    cps, syncs = [], []
    for _ in range(reps):
        dst.unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True)
        cps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fsync_file(dst)
        syncs.append(time.perf_counter() - t0)
        dst.unlink()
    return median(cps), median(syncs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hub-bench-serve"))
    ap.add_argument("--mib", type=int, default=300, help="model size for the throughput rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rss-mib", default="30,300", help="the two sizes of the server memory check")
    ap.add_argument("--folder-mib", type=int, default=1024, help="Xet: the model folder's size")
    ap.add_argument("--client-rss-mib", default="100,1000,2000", help="Xet: the sizes of the client memory check")
    ap.add_argument("--quick", action="store_true", help="30 MiB, 2 rounds, RSS at 3 and 30 MiB")
    ap.add_argument("--small", action="store_true",
                    help="a check of the script: 30 MiB, 1 round, RSS at 3 and 30 MiB, a 60 MiB folder, client "
                         "RSS at 10 and 30 MiB")
    ap.add_argument("--keep", action="store_true", help="leave --workdir in place")
    ap.add_argument("--server-pythonpath", default=None,
                    help="put in front of the server's PYTHONPATH: an older source tree (git archive) for "
                         "before/after, and/or a `pip install --target` folder with pybase64/httptools/uvloop")
    args = ap.parse_args()
    if args.quick:
        args.mib, args.rounds, args.rss_mib = 30, 2, "3,30"
    if args.small:
        args.mib, args.rounds, args.rss_mib, args.folder_mib, args.client_rss_mib = 30, 1, "3,30", 60, "10,30"
    client_mibs = tuple(int(x) for x in args.client_rss_mib.split(","))
    small_mib, big_mib = (int(x) for x in args.rss_mib.split(","))
    workdir = args.workdir.absolute()
    # sources + per round: server blob + download (+ the cp copy, deleted at once); the RSS run: its two files
    # Xet: file + folder + merged copy, each stored once more by the server (dedup aside), the RSS files, pulls
    xet_need = 3 * args.mib + 4 * args.folder_mib + 2 * sum(client_mibs)
    check_disk(workdir, ((args.mib + 1) * (2 + 2 * args.rounds) + 3 * (small_mib + big_mib) + xet_need) << 20)
    started = time.perf_counter()

    src = workdir / "src" / "model.safetensors"
    t0 = time.perf_counter()
    size = make_safetensors(src, args.mib)
    print(f"model: {src} ({size:,} bytes, random bf16, safetensors), ready in {time.perf_counter() - t0:.1f} s")

    import huggingface_hub

    print(f"client: huggingface_hub {huggingface_hub.__version__}, default settings; server: hub serve on 127.0.0.1")
    try:
        srv = Server(workdir, "root-throughput", pythonpath=args.server_pythonpath)
        try:
            warm = workdir / "src-warm" / "model.safetensors"  # first-call costs (pyc, sockets) out of the rounds
            make_safetensors(warm, 1)
            push_pull(srv, workdir, warm, "bench/warmup", "warm")
            modules = srv.modules()
            print(f"server speed-ups loaded: {modules}")
            rows = []
            env = srv.client_env(workdir / "client")
            log = workdir / "client.log"
            for r in range(args.rounds):
                stamp(src, r + 1)
                repo = f"bench/model-{r}"
                if r % 2 == 0:
                    cp_s, sync_s = time_cp(src, workdir)
                    res = push_pull(srv, workdir, src, repo, f"r{r}")
                else:
                    res = push_pull(srv, workdir, src, repo, f"r{r}")
                    cp_s, sync_s = time_cp(src, workdir)
                res.update(cp=cp_s, sync=sync_s)
                # Where the time goes, same round, same file:
                resolve = f"/{repo}/resolve/main/model.safetensors"
                res["get_socket"] = run_worker(["get-socket", resolve], env, timeout=900, log=log)["seconds"]
                res["get_httpx"] = run_worker(["get-httpx", resolve], env, timeout=900, log=log)["seconds"]
                body = run_worker(["build-body", str(src)], env, timeout=900, log=log)
                res["body"], res["body_rss"] = body["seconds"], body["vmhwm_kib"]
                stamp(src, 1_000_000 + r)  # new content again: the LFS batch API would skip a stored blob
                srv.api().create_repo(f"bench/lfs-{r}")
                res["push_lfs"] = run_worker(["push-lfs", f"bench/lfs-{r}", str(src), "model.safetensors"], env,
                                             timeout=900, log=log)["seconds"]
                rows.append(res)
                print(f"  round {r}: cp {cp_s:.3f} s (+ fsync {sync_s:.3f} s), push {res['push']:.3f} s, "
                      f"pull {res['pull']:.3f} s; client body {res['body']:.3f} s, push via LFS {res['push_lfs']:.3f} s, "
                      f"GET socket {res['get_socket']:.3f} s, GET httpx {res['get_httpx']:.3f} s")
            commit_ms = srv.request_ms("POST", r"/api/models/bench/model-\d+/commit/main")
            preupload_ms = srv.request_ms("POST", r"/api/models/bench/model-\d+/preupload/main")
            get_ms = srv.request_ms("GET", r"/bench/model-\d+/resolve/main/model.safetensors")
            put_ms = srv.request_ms("PUT", r"/_lfs/upload/[0-9a-f]+")
            throughput_hwm = srv.vmhwm_kib()
        finally:
            srv.stop()

        rss_src = {}
        for mib_ in (small_mib, big_mib):
            rss_src[mib_] = workdir / f"src-{mib_}" / "model.safetensors"
            make_safetensors(rss_src[mib_], mib_, seed=mib_)
        srv = Server(workdir, "root-rss", pythonpath=args.server_pythonpath)
        try:
            srv.api().whoami()
            peaks = {"idle": srv.vmhwm_kib()}
            for mib_ in (small_mib, big_mib):
                push_pull(srv, workdir, rss_src[mib_], f"bench/rss-{mib_}", f"rss{mib_}")
                peaks[mib_] = srv.vmhwm_kib()
        finally:
            srv.stop()
        xet = xet_section(workdir, args, args.mib, args.folder_mib, client_mibs)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    m = {key: median([r[key] for r in rows]) for key in rows[0]}
    cp, sync = m["cp"], m["sync"]
    commit, put, get = median(commit_ms) / 1000, median(put_ms) / 1000, median(get_ms) / 1000
    print()
    print(f"{command_line()}")
    print(f"{size / 2**20:.0f} MiB safetensors (random bf16), loopback, huggingface_hub {huggingface_hub.__version__}, "
          f"server speed-ups: {modules}; median of {args.rounds} interleaved rounds (cp: 3 copies a round); "
          f"wall {time.perf_counter() - started:.0f} s")

    def row(label: str, seconds: float) -> None:
        print(f"{label:<66} {seconds:>7.3f} {mibs(size, seconds):>8.0f} {cp / seconds:>6.2f}")

    print(f"{'operation':<66} {'s':>7} {'MiB/s':>8} {'x cp':>6}")
    row("cp SRC DST (same disk, page cache)", cp)
    row("cp SRC DST + fsync DST", cp + sync)
    row("push: HfApi.upload_file, default settings (Xet)", m["push"])
    row("  regular mode (before Xet), client alone: base64/JSON commit body", m["body"])
    row("  server: the commit request (access log)", commit)
    row("push via LFS basic (raw PUT; hf_hub < 1.20 UA + HF_HUB_DISABLE_XET)", m["push_lfs"])
    row("  server: the LFS PUT request (access log)", put)
    row("pull: hf_hub_download, default settings, fresh cache", m["pull"])
    row("  server: GET into memory over a plain socket", m["get_socket"])
    row("  client HTTP stack alone: httpx2 stream iter_raw, no file", m["get_httpx"])
    print(f"other requests (median): preupload {median(preupload_ms):.0f} ms; resolve GET during hf_hub_download "
          f"{1000 * get:.0f} ms")
    print(f"client peak RSS (median): push {m['push_rss'] / 1024:.0f} MiB (building the body alone "
          f"{m['body_rss'] / 1024:.0f} MiB), pull {m['pull_rss'] / 1024:.0f} MiB")
    push, pull = m["push"], m["pull"]
    ok_push, ok_pull = cp / push >= 0.5, cp / pull >= 0.5
    print(f"goal push >= 0.5 x cp: {'met' if ok_push else 'NOT met'} ({cp / push:.2f}); "
          f"pull >= 0.5 x cp: {'met' if ok_pull else 'NOT met'} ({cp / pull:.2f})")
    print()
    grow = (peaks[big_mib] - peaks[small_mib]) / 1024
    print(f"server peak RSS (VmHWM), fresh server: idle {peaks['idle'] / 1024:.1f} MiB, after {small_mib} MiB "
          f"push+pull {peaks[small_mib] / 1024:.1f} MiB, after {big_mib} MiB push+pull {peaks[big_mib] / 1024:.1f} MiB "
          f"(+{grow:.1f} MiB); throughput server after all rounds {throughput_hwm / 1024:.1f} MiB")
    print(f"goal flat within 64 MiB: {'met' if grow < 64 else 'NOT met'}")
    print_xet(xet)


if __name__ == "__main__":
    main()
