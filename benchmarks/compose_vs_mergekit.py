"""Merging 8 sparse experts into SmolLM2-135M: `hub compose` against mergekit on the same experts as dense models.

    .venv/bin/python benchmarks/compose_vs_mergekit.py [--workdir /tmp/hub-bench] [--experts 8] [--rounds 1] [--quick]

Needs mergekit (`pip install -e '.[bench]'`). The experts are compose_vs_peft's (random, keep ratio 0.05 on
q/k/v of all 30 layers, bf16 values, cached under --workdir). mergekit merges whole models, so each expert is
also materialised as a dense fine-tuned model folder (bf16 base + delta rounded to bf16, every tensor of the
base, config and tokenizer: what a full fine-tune would publish). Both tools then run the same two merges:

  task arithmetic   ours  hub compose --method task-arithmetic --lambda 1 --out DIR
                    mergekit  merge_method: task_arithmetic, weight 1 each, lambda 1 (normalize false)
  TIES              ours  hub compose --method ties --density 0.2 --lambda 1 --out DIR
                    mergekit  merge_method: ties, weight 1 and density 0.2 each, lambda 1 (normalize true)
  mergekit runs with dtype float32 (the arithmetic) and out_dtype bfloat16 (the base's dtype, ours' output).

Each run is a fresh process (`mergekit-yaml CONFIG OUT`, `hub compose ...`), peak RSS from GNU time.
Disk: what each approach must hold besides the base: mergekit 8 dense model folders + the output; ours 8
packed experts + the output. The outputs are compared tensor by tensor, and with an fp64 reference computed
here from the experts' exact deltas (the dense folders carry the materialisation's bf16 rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compose_common import (
    BIN,
    HUB,
    base_tensors,
    command_line,
    compare_folders,
    dir_bytes,
    expected_sum,
    mib,
    run_measured,
    smollm2_setup,
)

SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")


def materialise(setup: dict) -> list[Path]:
    """Each expert as a dense bf16 model folder (cached next to the experts)."""
    from safetensors.torch import save_file

    from hubtool.format import ExpertReader

    root = Path(setup["home"]) / "dense"
    marker = root / "done.json"
    folders = [root / f"e{i}" for i in range(len(setup["blobs"]))]
    if marker.is_file() and json.loads(marker.read_text()) == setup["refs"] and all(f.is_dir() for f in folders):
        return folders
    shutil.rmtree(root, ignore_errors=True)
    base_dir = Path(setup["base"])
    base = base_tensors(base_dir)
    for folder, blob in zip(folders, setup["blobs"]):
        folder.mkdir(parents=True)
        reader = ExpertReader(blob)
        tensors = dict(base)
        for name in setup["weights"]:
            w = base[name].float().view(-1).clone()
            pos, val = reader.read(name).entries()
            w.index_add_(0, pos, val)
            tensors[name] = w.to(base[name].dtype).view(base[name].shape)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for f in SIDE_FILES:
            if (base_dir / f).is_file():
                shutil.copyfile(base_dir / f, folder / f)
    marker.write_text(json.dumps(setup["refs"]))
    return folders


def mergekit_config(method: str, base: str, models: list[Path], density: float) -> str:
    import yaml

    per_model = {"weight": 1.0} if method == "task_arithmetic" else {"weight": 1.0, "density": density}
    cfg = {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": str(m), "parameters": dict(per_model)} for m in models],
        "parameters": {"lambda": 1.0},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def ties_reference(setup: dict, density: float) -> dict:
    """{weight: fp64 TIES merge} from the experts' exact deltas: trim each to its int(density * numel)
    largest magnitudes, elect the sign of the sum, average the agreeing nonzero entries; base + that."""
    import torch

    from hubtool.format import ExpertReader

    base = base_tensors(Path(setup["base"]))
    readers = [ExpertReader(b) for b in setup["blobs"]]
    out = {}
    for name in setup["weights"]:
        w = base[name].double().view(-1)
        deltas = torch.zeros(len(readers), w.numel(), dtype=torch.float64)
        for t, r in enumerate(readers):
            pos, val = r.read(name).entries()
            deltas[t, pos] = val.double()
        k = int(density * w.numel())
        for t in range(len(readers)):
            if int((deltas[t] != 0).sum()) > k:
                keep = torch.topk(deltas[t].abs(), k).indices
                trimmed = torch.zeros_like(deltas[t])
                trimmed[keep] = deltas[t][keep]
                deltas[t] = trimmed
        sign = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).double()
        agree = (torch.sign(deltas) == sign).double()
        den = agree.sum(0)
        merged = torch.where(den > 0, (deltas * agree).sum(0) / den.clamp_min(1), 0.0)
        out[name] = (w + merged).view(base[name].shape)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hub-bench"))
    ap.add_argument("--omp-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every measured process, ours and the peer's (default: unset)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.05)
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="3 experts, task arithmetic only")
    args = ap.parse_args()
    try:
        import mergekit  # noqa: F401
    except ImportError:
        sys.exit("mergekit is not installed: pip install -e '.[bench]'")
    if args.quick:
        args.experts, args.rounds = 3, 1
    print(f"command: {command_line()}")
    setup = smollm2_setup(args.workdir, n_experts=args.experts, keep=args.keep)
    t0 = time.perf_counter()
    dense = materialise(setup)
    print(f"dense expert folders ready ({time.perf_counter() - t0:.1f} s)")
    home = Path(setup["home"])
    env = dict(os.environ, HUB_HOME=setup["hub_home"])
    env.pop("HUB_CATALOG", None)
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)
    print(f"OMP_NUM_THREADS for the measured processes: {env.get('OMP_NUM_THREADS', 'unset (torch default)')}")
    mk = str(BIN / "mergekit-yaml")
    methods = [("task-arithmetic", "task_arithmetic")] + ([] if args.quick else [("ties", "ties")])
    results = {}
    for ours_name, mk_name in methods:
        cfg = home / f"mergekit-{mk_name}.yml"
        cfg.write_text(mergekit_config(mk_name, setup["base"], dense, args.density))
        extra = ["--density", str(args.density)] if ours_name == "ties" else []
        hub_argv = [HUB, "compose", "--experts", ",".join(setup["refs"]), "--method", ours_name, *extra,
                    "--lambda", "1", "--out"]
        mk_argv = [mk, str(cfg)]
        print(f"{ours_name}: ours  HUB_HOME={setup['hub_home']} {' '.join(hub_argv)} OUT")
        print(f"{ours_name}: mergekit  {' '.join(mk_argv)} OUT   ({cfg.name}:)")
        print("    " + cfg.read_text().replace("\n", "\n    ").rstrip())
        outs = {"ours": home / f"out-ours-{mk_name}", "mergekit": home / f"out-mergekit-{mk_name}"}
        runs: dict[str, list] = {"ours": [], "mergekit": []}
        for r in range(args.rounds):
            for side in (("ours", "mergekit") if r % 2 == 0 else ("mergekit", "ours")):
                shutil.rmtree(outs[side], ignore_errors=True)
                argv = [*hub_argv, str(outs[side])] if side == "ours" else [*mk_argv, str(outs[side])]
                res = run_measured(argv, env=env, log=home / f"{side}-{mk_name}.log")
                runs[side].append(res)
                print(f"  round {r + 1} {side:8s} {res[0]:7.2f} s  peak RSS {mib(res[1])}", flush=True)
        exact = expected_sum(setup) if ours_name == "task-arithmetic" else ties_reference(setup, args.density)
        results[ours_name] = {
            "runs": runs,
            "cmp": compare_folders(outs["ours"], outs["mergekit"], exact),
            "out_bytes": {s: dir_bytes(p) for s, p in outs.items()},
        }

    dense_bytes = sum(dir_bytes(d) for d in dense)
    packed_bytes = sum(Path(b).stat().st_size for b in setup["blobs"])
    print()
    print(f"SmolLM2-135M bf16, {len(setup['refs'])} sparse experts (keep {args.keep} on q/k/v, "
          f"{len(setup['weights'])} weights), CPU x{os.cpu_count()}; median of {args.rounds} round(s), "
          "fresh process each")
    print(f"{'merge':16s} {'tool':9s} {'wall s':>8s} {'x ours':>7s} {'peak RSS MiB':>13s} {'x ours':>7s} "
          f"{'inputs MiB':>11s} {'output MiB':>11s}")
    print("-" * 90)
    for method, res in results.items():
        med = {s: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v))
               for s, v in res["runs"].items()}
        for side, inputs in (("ours", packed_bytes), ("mergekit", dense_bytes)):
            w, m = med[side]
            print(f"{method:16s} {side:9s} {w:8.2f} {w / med['ours'][0]:7.2f} {m / 2**20:13,.0f} "
                  f"{m / med['ours'][1]:7.2f} {inputs / 2**20:11,.1f} {res['out_bytes'][side] / 2**20:11,.0f}")
    print(f"disk besides the base: mergekit {mib(dense_bytes + max(r['out_bytes']['mergekit'] for r in results.values()))}"
          f" ({len(dense)} dense folders {mib(dense_bytes)} + output), ours "
          f"{mib(packed_bytes + max(r['out_bytes']['ours'] for r in results.values()))} ({len(dense)} packed experts "
          f"{packed_bytes / 2**20:.1f} MiB + output); inputs {dense_bytes / packed_bytes:,.0f}x smaller")
    for method, res in results.items():
        c = res["cmp"]
        print(f"{method}: {c['tensors']} tensors compared, {c['entries_differ']:,} entries differ, max |ours - "
              f"mergekit| = {c['max_abs']:.3g} ({c['worst'] or '-'})")
        print(f"  vs the fp64 reference ({c['entries']:,} entries): ours max error {c['err_first']:.3g}, "
              f"{c['misrounded_first']:,} not the correctly rounded bf16; mergekit max error "
              f"{c['err_second']:.3g}, {c['misrounded_second']:,} not")
        if c["only_first"] or c["only_second"]:
            print(f"  only in ours: {c['only_first']}; only in mergekit's: {c['only_second']}")


if __name__ == "__main__":
    main()
