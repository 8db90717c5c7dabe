"""Merging 8 sparse experts into SmolLM2-135M: `hub compose` against PEFT's own load-and-merge path.

    .venv/bin/python benchmarks/compose_vs_peft.py [--workdir /tmp/hub-bench] [--experts 8] [--rounds 3] [--quick]

The inputs (built once, cached under --workdir): 8 random sparse experts, keep ratio 0.05 on q/k/v of all
30 layers of the embedded base (bf16 values, fingerprints of the base weights), registered in a throw-away
catalog and exported with hubtool.interop.peft.export_peft as PEFT SHiRA folders.

  ours   `hub compose --experts e0@1,... --method task-arithmetic --lambda 1 --out DIR`  (= base + Σ deltas)
  PEFT   AutoModelForCausalLM.from_pretrained(base, bf16); PeftModel.from_pretrained(first adapter);
         load_adapter for the other 7; all 8 set active; merge_and_unload(adapter_names=all 8);
         save_pretrained(DIR).  (PEFT's SHiRA has no add_weighted_adapter: that exists for LoRA and IA3
         only, so summing the adapters by merging them all is PEFT's way to get the same model.)

Each side runs in its own fresh process (imports included: what a user waits for), peak RSS = that
process's ru_maxrss; the sides alternate round by round and the table gives medians. Then both outputs are
compared tensor by tensor, and each against the exact fp64 sum, in bf16 ulps.
Goal (issue 6): ours >= 5x faster than PEFT and less peak memory.
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
    HUB,
    command_line,
    compare_folders,
    expected_sum,
    mib,
    run_measured,
    smollm2_setup,
)


def peft_child(setup_file: str, out: str, timings: str) -> None:
    """PEFT side: load the base, the 8 SHiRA adapters, merge them all, save."""
    t0 = time.perf_counter()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    setup = json.loads(Path(setup_file).read_text())
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.bfloat16)
    t2 = time.perf_counter()
    names = [f"e{i}" for i in range(len(setup["peft"]))]
    pm = PeftModel.from_pretrained(model, setup["peft"][0], adapter_name=names[0])
    for name, folder in zip(names[1:], setup["peft"][1:]):
        pm.load_adapter(folder, adapter_name=name)
    pm.base_model.set_adapter(names)  # all 8 active
    t3 = time.perf_counter()
    merged = pm.merge_and_unload(adapter_names=names)
    t4 = time.perf_counter()
    merged.save_pretrained(out)
    t5 = time.perf_counter()
    Path(timings).write_text(json.dumps({"import": t1 - t0, "load base": t2 - t1, "load adapters": t3 - t2,
                                         "merge": t4 - t3, "save": t5 - t4}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hub-bench"))
    ap.add_argument("--omp-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every measured process, ours and the peer's (default: unset)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 experts, 1 round")
    ap.add_argument("--child", nargs=3, metavar=("SETUP", "OUT", "TIMINGS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return peft_child(*args.child)
    if args.quick:
        args.experts, args.rounds = 3, 1
    print(f"command: {command_line()}")
    t_setup = time.perf_counter()
    setup = smollm2_setup(args.workdir, n_experts=args.experts, keep=args.keep)
    print(f"setup {time.perf_counter() - t_setup:.1f} s")
    home = Path(setup["home"])
    setup_file = home / "setup.json"
    env = dict(os.environ, HUB_HOME=setup["hub_home"])
    env.pop("HUB_CATALOG", None)
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)
    print(f"OMP_NUM_THREADS for the measured processes: {env.get('OMP_NUM_THREADS', 'unset (torch default)')}")
    hub_argv = [HUB, "compose", "--experts", ",".join(setup["refs"]), "--method", "task-arithmetic",
                "--lambda", "1", "--out"]
    print(f"ours: HUB_HOME={setup['hub_home']} {' '.join(hub_argv)} OUT")
    print("PEFT: PeftModel.from_pretrained + load_adapter x{} + merge_and_unload(all) + save_pretrained"
          .format(len(setup["peft"]) - 1))
    rows: dict[str, list[tuple[float, int]]] = {"ours": [], "peft": []}
    phases = []
    outs = {side: home / f"out-{side}" for side in rows}
    for r in range(args.rounds):
        for side in (("ours", "peft") if r % 2 == 0 else ("peft", "ours")):
            shutil.rmtree(outs[side], ignore_errors=True)
            log = home / f"{side}.log"
            if side == "ours":
                res = run_measured([*hub_argv, str(outs[side])], env=env, log=log)
            else:
                timings = home / "peft-timings.json"
                res = run_measured([sys.executable, __file__, "--child", str(setup_file), str(outs[side]),
                                    str(timings)], env=env, log=log)
                phases.append(json.loads(timings.read_text()))
            rows[side].append(res)
            print(f"  round {r + 1} {side:5s} {res[0]:7.2f} s  peak RSS {mib(res[1])}")

    exact = expected_sum(setup)
    cmp = compare_folders(outs["ours"], outs["peft"], exact)
    med = {s: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for s, v in rows.items()}
    n_entries = sum(int(json.loads((Path(p) / "hubtool.json").read_text())["weights"][w]["nnz"])
                    for p in setup["peft"] for w in setup["weights"])
    print()
    print(f"SmolLM2-135M bf16, {len(setup['refs'])} sparse experts (keep {args.keep} on q/k/v, "
          f"{len(setup['weights'])} weights, {n_entries:,} entries in all), CPU x{os.cpu_count()}; "
          f"median of {args.rounds} round(s), fresh process each")
    print(f"{'method':34s} {'wall s':>8s} {'x ours':>7s} {'peak RSS MiB':>13s} {'x ours':>7s}")
    print("-" * 73)
    for side, label in (("ours", "hub compose task-arithmetic λ=1"), ("peft", "PEFT SHiRA load + merge_and_unload")):
        w, m = med[side]
        print(f"{label:34s} {w:8.2f} {w / med['ours'][0]:7.2f} {m / 2**20:13,.0f} {m / med['ours'][1]:7.2f}")
    ph = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    print("PEFT process phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
    speed, mem = med["peft"][0] / med["ours"][0], med["peft"][1] / med["ours"][1]
    print(f"PEFT / ours: {speed:.2f}x the time (goal >= 5x: {'met' if speed >= 5 else 'NOT met'}), "
          f"{mem:.2f}x the peak memory (goal > 1: {'met' if mem > 1 else 'NOT met'})")
    print(f"same weights: {cmp['tensors']} tensors compared, {cmp['entries_differ']:,} entries differ, "
          f"max |ours - PEFT| = {cmp['max_abs']:.3g} ({cmp['worst'] or '-'})")
    print(f"  against the exact sum (fp64, {cmp['entries']:,} entries of the {len(exact)} adapted weights): "
          f"ours max error {cmp['err_first']:.3g}, {cmp['misrounded_first']:,} entries not the correctly "
          f"rounded bf16; PEFT max error {cmp['err_second']:.3g}, {cmp['misrounded_second']:,} not")
    if cmp["only_first"] or cmp["only_second"]:
        print(f"  only in ours: {cmp['only_first']}; only in PEFT's: {cmp['only_second']}")


if __name__ == "__main__":
    main()
