"""Compose at scale: 20 sparse experts into a Phi-3-mini-shaped model (3.8 B parameters), against `cp -r`.

    .venv/bin/python benchmarks/compose_scale.py [--workdir /tmp/hub-bench] [--experts 20] [--profile-shards 1] [--quick]

Inputs, built once and cached under --workdir (reused while complete and built with the same parameters):
  base     transformers' Phi3Config with Phi-3-mini-4k's dims (hidden 3072, 32 layers, 32 heads, intermediate
           8192, vocab 32064, fused qkv_proj [9216, 3072], untied lm_head), random bf16 weights made here,
           written shard by shard with safetensors (<= 2 GB per shard, HF names and index), ~7.6 GB
  experts  20 random sparse experts, keep ratio 0.05 on every qkv_proj (each entry kept with probability
           0.05; bf16 values; the base weights' fingerprints), packed with hubtool.format.pack and registered
           in a throw-away catalog (HUB_HOME under the workdir)

Measured in one run, each in its own process, page cache warmed by reading the base once first:
  cp     `cp -r BASE COPY` (wall), then the fsync of every copied file (compose fsyncs its output, cp does
         not; both numbers are printed); the copy is removed afterwards
  ours   `hub compose --experts e00@1,... --method overlap-mean --out DIR`, wall and peak RSS (GNU time %M)
Goals (issue 6): wall <= 2x cp; peak RSS <= 1.5x the largest shard + the experts' packed files.
Then layer 0's merged qkv_proj is checked against an independent computation, and (--profile-shards K,
default 1: the first shard) the same streaming merge is re-run phase by phase from the library pieces
(single file order, no read-ahead) to show where the time goes, extrapolated to the whole model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compose_common import (
    HUB,
    build_expert,
    check_disk,
    command_line,
    dir_bytes,
    fsync_tree,
    gib,
    mib,
    read_through,
    run_measured,
)

PHI3 = {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 32,
        "vocab_size": 32064, "max_position_embeddings": 4096, "tie_word_embeddings": False}
QKV = "self_attn.qkv_proj.weight"


def phi3_config(layers: int):
    from transformers import Phi3Config

    config = Phi3Config(num_hidden_layers=layers, **PHI3)
    config.dtype = "bfloat16"
    return config


# --- the base model ------------------------------------------------------------------------------------


def make_base(folder: Path, layers: int, shard_bytes: int) -> dict[str, str]:
    """Write the random bf16 base shard by shard into `folder` (atomically); {qkv weight: fingerprint}."""
    import torch
    from safetensors.torch import save_file
    from transformers import Phi3ForCausalLM

    from hubtool.format import fingerprint

    config = phi3_config(layers)
    with torch.device("meta"):
        shapes = [(n, tuple(p.shape)) for n, p in Phi3ForCausalLM(config).named_parameters()]
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map, fingerprints, total = {}, {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for j, (name, shape) in enumerate(shard):
            gen = torch.Generator().manual_seed(1000 * i + j)
            if len(shape) == 1:  # norms
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(torch.bfloat16)
            if name.endswith(QKV):
                fingerprints[name] = fingerprint(t)
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * 2
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        del tensors
        print(f"  base shard {i + 1}/{len(shards)} written", flush=True)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    config.save_pretrained(tmp)
    fsync_tree(tmp)
    tmp.rename(folder)
    return fingerprints


def _expert_job(args: tuple) -> tuple[str, int]:
    name, base, weights, keep, seed, path = args
    import torch

    torch.set_num_threads(1)  # two of these run side by side
    return name, build_expert(name, base, weights, keep, seed, Path(path))


def setup(workdir: Path, layers: int, n_experts: int, keep: float, shard_bytes: int) -> dict:
    params = {"layers": layers, "experts": n_experts, "keep": keep, "shard_bytes": shard_bytes, "version": 1}
    home = workdir / f"phi3-{layers}L-{n_experts}x{keep}"
    base, hub_home, marker = home / "base", home / "hub", home / "setup.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("params") == params and base.is_dir() and all(Path(b).is_file() for b in done["blobs"]):
            print(f"reusing the base and {n_experts} experts in {home}")
            return done
    est = 2 * 3.8e9 * layers / 32 + n_experts * layers * 3.9e6 * keep / 0.05
    check_disk(workdir, int(est * 2.2))  # base + experts + (later) one copy at a time
    t0 = time.perf_counter()
    fps_file = home / "fingerprints.json"
    if not base.is_dir() or not fps_file.is_file():
        shutil.rmtree(base, ignore_errors=True)
        home.mkdir(parents=True, exist_ok=True)
        print(f"making the base model ({layers} layers) in {base}", flush=True)
        fps_file.write_text(json.dumps(make_base(base, layers, shard_bytes)))
    fingerprints = json.loads(fps_file.read_text())
    t_base = time.perf_counter() - t0
    os.environ["HUB_HOME"] = str(hub_home)
    os.environ.pop("HUB_CATALOG", None)
    shutil.rmtree(hub_home, ignore_errors=True)
    packed = home / "packed"
    shutil.rmtree(packed, ignore_errors=True)
    packed.mkdir(parents=True)
    shapes = {n: ((9216, 3072), fp) for n, fp in fingerprints.items()}
    jobs = [(f"e{i:02d}", str(base), shapes, keep, 7000 + i, str(packed / f"e{i:02d}.safetensors"))
            for i in range(n_experts)]
    t0 = time.perf_counter()
    print(f"building {n_experts} experts ({len(shapes)} qkv weights each)", flush=True)
    with ProcessPoolExecutor(2) as pool:
        for name, nbytes in pool.map(_expert_job, jobs):
            print(f"  {name}: {nbytes / 2**20:.1f} MiB", flush=True)
    from hubtool.registry import Catalog

    cat = Catalog()
    refs, blobs = [], []
    for name, *_ in jobs:
        rec = cat.register(packed / f"{name}.safetensors")
        (packed / f"{name}.safetensors").unlink()
        refs.append(rec.ref)
        blobs.append(str(cat.blob_path(rec)))
    cat.close()
    done = {"params": params, "home": str(home), "base": str(base), "hub_home": str(hub_home), "refs": refs,
            "blobs": blobs, "base_seconds": round(t_base, 1), "experts_seconds": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(done, indent=2) + "\n")
    return done


# --- checking and profiling ----------------------------------------------------------------------------


def check_layer0(out: Path, s: dict) -> str:
    """Layer 0's merged qkv_proj against base + overlap-mean computed here with plain index_add_."""
    import torch
    from safetensors import safe_open

    from hubtool.format import ExpertReader

    name = f"model.layers.0.{QKV}"
    index = json.loads((Path(s["base"]) / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(Path(s["base"]) / index[name]), framework="pt") as f:
        w0 = f.get_tensor(name)
    out_index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(out / out_index[name]), framework="pt") as f:
        got = f.get_tensor(name)
    total = torch.zeros(w0.numel(), dtype=torch.float64)
    count = torch.zeros(w0.numel(), dtype=torch.float64)
    for blob in s["blobs"]:
        pos, val = ExpertReader(blob).read(name).entries()
        total.index_add_(0, pos, val.double())
        count.index_add_(0, pos, torch.ones(pos.numel(), dtype=torch.float64))
    expected = w0.double().view(-1) + torch.where(count > 0, total / count.clamp_min(1), 0.0)
    exact = expected.to(torch.bfloat16).view(w0.shape)
    differ = int((got != exact).sum())
    err = float((got.double().view(-1) - expected).abs().max())
    return (f"layer 0 qkv_proj vs an independent fp64 overlap-mean: {differ:,} of {w0.numel():,} entries differ "
            f"from the correctly rounded bf16, max |error| {err:.3g}")


def profile_child(setup_file: str, shards: int, out: str, result: str) -> None:
    """The streaming merge of write_model, re-run from the library pieces with a timer per phase."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hubtool.merge import execute
    from hubtool.merge.compose import build_recipe
    from hubtool.merge.methods import WeightInputs, merge_weight
    from hubtool.merge.plan import make_plan
    from hubtool.registry import Catalog

    s = json.loads(Path(setup_file).read_text())
    cat = Catalog()
    plan = make_plan(cat, build_recipe(experts=s["refs"], method="overlap-mean"))
    params = execute.params_of(plan)
    readers = plan.readers()
    folder = Path(s["base"])
    layout = execute.shard_layout(folder)
    t = dict.fromkeys(("read base", "read+decode experts", "fingerprints", "merge", "add+round", "write+fsync"), 0.0)
    done = {"shards": 0, "bytes": 0, "weights": 0}
    out_dir = Path(out)
    out_dir.mkdir(parents=True)
    w = torch.tensor([c.weight for c in plan.choices], dtype=torch.float32)
    for shard, names in layout[:shards]:
        tensors = {}
        with safe_open(str(folder / shard), framework="pt") as f:
            for name in names:
                t0 = time.perf_counter()
                x = f.get_tensor(name)
                t1 = time.perf_counter()
                t["read base"] += t1 - t0
                if name in plan.weights:
                    deltas = [readers[i].read(name) for i in range(len(plan.choices))]
                    entries = [d.entries() for d in deltas]
                    t2 = time.perf_counter()
                    execute._check_fingerprints(plan, name, x, [d.fingerprint for d in deltas])
                    t3 = time.perf_counter()
                    inputs = WeightInputs(name, plan.shapes[name], entries, w, [c.ref for c in plan.choices])
                    merged = merge_weight(plan.recipe.method, inputs, params)
                    t4 = time.perf_counter()
                    x = execute.add_merged(x, merged, torch.bfloat16)
                    t5 = time.perf_counter()
                    t["read+decode experts"] += t2 - t1
                    t["fingerprints"] += t3 - t2
                    t["merge"] += t4 - t3
                    t["add+round"] += t5 - t4
                    done["weights"] += 1
                    del deltas, entries, inputs, merged
                tensors[name] = x.contiguous()
                done["bytes"] += x.numel() * x.element_size()
        t0 = time.perf_counter()
        save_file(tensors, str(out_dir / shard), metadata={"format": "pt"})
        fsync_tree(out_dir)
        t["write+fsync"] += time.perf_counter() - t0
        del tensors
        done["shards"] += 1
    Path(result).write_text(json.dumps({"seconds": t, **done}))


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hub-bench"))
    ap.add_argument("--omp-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every measured process, ours and the peer's (default: unset)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--experts", type=int, default=20)
    ap.add_argument("--keep", type=float, default=0.05)
    ap.add_argument("--shard-gb", type=float, default=2.0, help="max shard size, GB (10^9 bytes, as HF)")
    ap.add_argument("--profile-shards", type=int, default=1, help="shards to profile phase by phase (0: none)")
    ap.add_argument("--quick", action="store_true", help="2 layers, 3 experts, 0.25 GB shards, profile all")
    ap.add_argument("--setup-only", action="store_true", help="build (or check) the cached inputs, measure nothing")
    ap.add_argument("--profile-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile_child:
        a = args.profile_child
        return profile_child(a[0], int(a[1]), a[2], a[3])
    if args.quick:
        args.layers, args.experts, args.shard_gb = 2, 3, 0.25
        args.profile_shards = args.profile_shards and 99  # all shards: the first holds no qkv weight
    print(f"command: {command_line()}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    s = setup(args.workdir, args.layers, args.experts, args.keep, int(args.shard_gb * 1e9))
    if args.setup_only:
        return
    home, base = Path(s["home"]), Path(s["base"])
    shards = sorted(base.glob("*.safetensors"))
    largest = max(p.stat().st_size for p in shards)
    base_bytes = sum(p.stat().st_size for p in shards)
    experts_bytes = sum(Path(b).stat().st_size for b in s["blobs"])
    check_disk(args.workdir, base_bytes + 2**30)
    env = dict(os.environ, HUB_HOME=s["hub_home"])
    env.pop("HUB_CATALOG", None)
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)
    print(f"OMP_NUM_THREADS for the measured processes: {env.get('OMP_NUM_THREADS', 'unset (torch default)')}")
    print(f"base: {len(shards)} shards, {gib(base_bytes)}, largest {gib(largest)}; {len(s['refs'])} experts, "
          f"{mib(experts_bytes)} packed (setup took base {s['base_seconds']} s, experts {s['experts_seconds']} s)")

    print("warming the page cache (reading the base once)", flush=True)
    read_through(base)
    copy = home / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    cp_s, cp_rss = run_measured(["cp", "-r", str(base), str(copy)])
    t0 = time.perf_counter()
    fsync_tree(copy)
    cp_sync_s = cp_s + time.perf_counter() - t0
    shutil.rmtree(copy)
    print(f"  cp -r: {cp_s:.1f} s (+ fsync: {cp_sync_s:.1f} s)", flush=True)

    out = home / "composed"
    shutil.rmtree(out, ignore_errors=True)
    hub_argv = [HUB, "compose", "--experts", ",".join(s["refs"]), "--method", "overlap-mean", "--out", str(out)]
    print(f"  HUB_HOME={s['hub_home']} {' '.join(hub_argv)}", flush=True)
    ours_s, ours_rss = run_measured(hub_argv, env=env, log=home / "compose.log")
    print(f"  hub compose: {ours_s:.1f} s, peak RSS {mib(ours_rss)}", flush=True)
    check = check_layer0(out, s)
    out_bytes = dir_bytes(out)
    shutil.rmtree(out)

    prof = None
    if args.profile_shards:
        pout = home / "profiled"
        shutil.rmtree(pout, ignore_errors=True)
        result = home / "profile.json"
        print(f"profiling the first {args.profile_shards} shard(s) phase by phase", flush=True)
        run_measured([sys.executable, __file__, "--profile-child", str(home / "setup.json"),
                      str(args.profile_shards), str(pout), str(result)], env=env, log=home / "profile.log")
        shutil.rmtree(pout)
        prof = json.loads(result.read_text())

    n_weights = args.layers
    budget = 1.5 * largest + experts_bytes
    print()
    print(f"Phi-3-mini-shaped model ({args.layers} layers, {base_bytes / 2e9:.2f} B params bf16, {len(shards)} "
          f"shards <= {args.shard_gb:g} GB), {len(s['refs'])} sparse experts (keep {args.keep} on all "
          f"{n_weights} qkv_proj [9216, 3072]), overlap-mean; CPU x{os.cpu_count()}, commit {commit}")
    print(f"{'what':44s} {'wall s':>8s} {'x cp':>6s} {'peak RSS MiB':>13s}")
    print("-" * 74)
    print(f"{'cp -r base copy':44s} {cp_s:8.1f} {1:6.2f} {cp_rss / 2**20:13,.0f}")
    print(f"{'cp -r base copy + fsync of the copy':44s} {cp_sync_s:8.1f} {cp_sync_s / cp_s:6.2f}")
    print(f"{'hub compose --method overlap-mean --out':44s} {ours_s:8.1f} {ours_s / cp_s:6.2f} "
          f"{ours_rss / 2**20:13,.0f}")
    print(f"wall: compose / cp = {ours_s / cp_s:.2f}x, / (cp + fsync) = {ours_s / cp_sync_s:.2f}x "
          f"(goal <= 2x cp: {'met' if ours_s <= 2 * cp_s else 'NOT met'})")
    print(f"peak RSS: {mib(ours_rss)} = {ours_rss / budget:.2f}x the budget 1.5 x largest shard ({mib(largest)}) "
          f"+ packed experts ({mib(experts_bytes)}) = {mib(budget)}; {ours_rss / largest:.2f}x the largest shard "
          f"(goal <= 1x budget: {'met' if ours_rss <= budget else 'NOT met'})")
    print(f"output {gib(out_bytes)}; {check}")
    if prof:
        sec = prof["seconds"]
        wf, bf = n_weights / max(prof["weights"], 1), base_bytes / max(prof["bytes"], 1)
        per_weight = ("read+decode experts", "fingerprints", "merge", "add+round")
        total = sum(v * (wf if k in per_weight else bf) for k, v in sec.items())
        print(f"where the time goes (profile of {prof['shards']} shard(s): {prof['weights']} qkv weights, "
              f"{gib(prof['bytes'])}; single order, no read-ahead; scaled to the whole model: per-weight phases "
              f"x {wf:.2f}, per-byte phases x {bf:.2f}):")
        for k, v in sec.items():
            scaled = v * (wf if k in per_weight else bf)
            print(f"  {k:22s} {v:7.2f} s measured  ~{scaled:7.1f} s whole model  {100 * scaled / total:5.1f}%")
        print(f"  {'sum':22s} {sum(sec.values()):7.2f} s measured  ~{total:7.1f} s whole model")


if __name__ == "__main__":
    main()
