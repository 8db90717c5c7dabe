"""Where a Xet push's time goes: the client's own upload ceiling against `hub serve`, in one run (issue 17).

    .venv/bin/python benchmarks/xet_push_ceiling.py [--mib 100] [--rounds 5] [--workdir /tmp/xet-ceiling]
                                                    [--server-pythonpath DIRS] [--compression-policy none]
                                                    [--keep]

Per round, on the same file (a safetensors file of random bf16 tensors, stamped anew each round so nothing
deduplicates), in this process, with hf_xet's default settings:
  hash_files     hf_xet.hash_files: chunking + hashing (issue 17's ceiling)
  do-nothing CAS hf_xet.upload_files into tests/xet_capture.py's CaptureCas, which keeps the bytes in memory
                 and checks nothing: what the client can upload at all (it also compresses and sends)
  hub serve      hf_xet.upload_files into a fresh `hub serve`'s CAS (a write token from the Hub side), and the
                 server's CPU seconds per MiB (/proc/<pid>/stat)
  hub serve (B)  the same for --server-pythonpath (an older tree, `git archive <commit> hubtool | tar -x -C DIR`),
                 so before/after compare in one machine state
Medians are printed, with each as a multiple of hash_files. On a machine shared with other work, compare the
ratios inside one run only.

--compression-policy none|lz4|bg4-lz4 sets hf_xet's HF_XET_XORB_COMPRESSION_POLICY (not a default setting)
before hf_xet loads: run once with it and once without to see what the client's compression costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from hub_common import TOKEN, Server, make_safetensors, median, stamp


def upload(path: Path, url: str, token: str) -> float:
    import hf_xet

    info = (token, int(time.time()) + 3600)
    with warnings.catch_warnings():  # upload_files is deprecated in hf_xet 1.8; it speaks the same protocol
        warnings.simplefilter("ignore", DeprecationWarning)
        t0 = time.perf_counter()
        hf_xet.upload_files([str(path)], url, info, lambda: info, None, "model")
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/xet-ceiling"))
    ap.add_argument("--server-pythonpath", default=None, help="a second server tree to compare (see above)")
    ap.add_argument("--compression-policy", choices=["none", "lz4", "bg4-lz4"], default=None,
                    help="HF_XET_XORB_COMPRESSION_POLICY for this run (default: hf_xet's own choice)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.compression_policy:  # read by hf_xet when it loads its config, so set before the import
        os.environ["HF_XET_XORB_COMPRESSION_POLICY"] = args.compression_policy

    import hf_xet
    import httpx2
    from xet_capture import CaptureCas

    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / "model.safetensors"
    make_safetensors(src, args.mib)
    mib = src.stat().st_size / 2**20
    trees = {"hub serve": None}
    if args.server_pythonpath:
        trees["hub serve (B)"] = args.server_pythonpath
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds):
            stamp(src, 7000 + r)
            t0 = time.perf_counter()
            hf_xet.hash_files([str(src)])
            times.setdefault("hash_files", []).append(time.perf_counter() - t0)
            with CaptureCas() as cas:
                times.setdefault("do-nothing CAS", []).append(upload(src, cas.url, "capture"))
            order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                tag = "b" if tree else "a"
                srv = Server(args.workdir, f"root-{r}-{tag}", log_level="warning", pythonpath=tree)
                try:
                    srv.api().create_repo("bench/xet")
                    grant = httpx2.get(
                        f"{srv.url}/api/models/bench/xet/xet-write-token/main",
                        headers={"authorization": f"Bearer {TOKEN}"},
                    ).json()
                    c0 = srv.cpu_seconds()
                    times.setdefault(name, []).append(upload(src, grant["casUrl"], grant["accessToken"]))
                    cpu.setdefault(name, []).append((srv.cpu_seconds() - c0) / mib * 1000)
                finally:
                    srv.stop()
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    hash_s = median(times["hash_files"])
    policy = args.compression_policy or "hf_xet's default (auto)"
    print(f"\n{mib:.0f} MiB, {args.rounds} rounds, medians; client compression policy: {policy}")
    for name, values in times.items():
        s = median(values)
        extra = f", server CPU {median(cpu[name]):.2f} ms/MiB" if name in cpu else ""
        print(f"{name:<16} {s:6.2f} s {mib / s:7.0f} MiB/s {hash_s / s:5.2f}x hash_files{extra}")


if __name__ == "__main__":
    main()
