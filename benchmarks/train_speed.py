"""Training step time and peak memory on SmolLM2-135M (CPU): our sparse experts against the floor and peers.

    HUB_HOME=/tmp/bench-home .venv/bin/python benchmarks/train_speed.py [--steps 3] [--rounds 3] [--tcmalloc]
    ... --methods all     every method below (default: the first six, ~6-7 min on 2 quiet cores)
    ... --small           1 round x 1 step, floor/sparse/lora/masked-dense (a smoke run)

Setting (the same for every method): fp32 weights (as `hub train` loads them), a fixed batch of
8 x 128 random token ids with labels on every token, AdamW, gradient clipping, targets qkv
(q_proj/k_proj/v_proj of all 30 layers), deterministic algorithms on (as hubtool's Trainer runs on CPU).
One step = forward + backward + clip + optimizer step + zero_grad.

Methods:
  floor         no adapter, every weight frozen; forward + the backward that input gradients need (down
                to the embeddings' output): what any adapter on these targets pays at least. No optimizer.
  sparse        ours, keep ratio 0.05, mask frozen from the start (the steady state of a run), trained
                as the Trainer does: inside adapter.folded(), W + D folded into W in place
  block-sparse  ours, 16 x 16 tiles, same keep ratio, folded
  lora          PEFT LoRA r=4, alpha 16 (peft.get_peft_model), the named peer
  full-qkv      ours, full fine-tuning of the target weights (a dense delta per weight)
  masked-dense  the paper's code (microsoft/mttl sparse_mask_adapter, re-implemented in
                benchmarks/train_memory.py): y = W x + (D ⊙ M) x, D dense fp32, M a dense fp32 0/1 mask,
                a gradient hook grad * mask, dense AdamW on D; mask frozen (random top-k, as ours)
  sparse-copy   ours without folding: W + D built into a fresh copy of W in forward and in backward
  sparse-dense  ours in the dense phase of --mask-score sensitivity (before the mask freezes: what a
                `hub train` run does for its first epoch): a dense fp32 delta, a mask, straight-through
                dense gradient zeroed outside the mask before each step, dense AdamW
  full-all      plain torch: every parameter requires grad
  shira         PEFT SHiRA, r chosen so its trainable entries match ours (r(m+n) per weight)

Each (method, round) runs in a fresh child process, so peak RSS (ru_maxrss of that child) is its own;
methods are interleaved round by round so that load from other processes on the shared cores hits
all of them alike, and the table reports medians over all measured steps of all rounds, each method
against the floor and against LoRA, sparse against masked-dense.

GPU: with CUDA and triton present, the Triton kernels are timed against the torch CUDA path (one q_proj
layer); without a GPU the script says so and skips that part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("floor", "sparse", "block-sparse", "lora", "full-qkv", "masked-dense", "sparse-copy", "sparse-dense",
           "full-all", "shira")
DEFAULT_METHODS = METHODS[:6]
SMALL_METHODS = ("floor", "sparse", "lora", "masked-dense")
# With --answer-tokens, methods that train through hub's Trainer use its loss (the output layer runs only
# at answer positions, hubtool.sparse.loss); the peers use transformers' own loss, as a PEFT user's loop
# does. "lora+hub-loss" is PEFT LoRA with our loss, to show how much of a gap is the loss, not the adapter.
HUB_LOSS = ("sparse", "block-sparse", "full-qkv", "lora+hub-loss")
PEER, FLOOR = "lora", "floor"
BATCH, SEQ, KEEP_RATIO, BLOCK = 8, 128, 0.05, 16
QKV = ["q_proj", "k_proj", "v_proj"]
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


# --- child: one method, a few steps -----------------------------------------------------------------


def build(method: str):
    """(model in train mode, its trainable parameters, a context the steps run in) for one method."""
    import contextlib

    import torch

    from hubtool.models import load_base

    model, _ = load_base("smollm2-135m", dtype=torch.float32)
    context = contextlib.nullcontext()
    before_step = None
    if method == "sparse-dense":
        from hubtool.sparse.adapters import Adapter
        from hubtool.sparse.config import AdapterConfig
        from hubtool.sparse.masks import select

        adapter = Adapter.apply(model, AdapterConfig(method="sparse", targets="qkv", keep_ratio=KEEP_RATIO))
        gen = torch.Generator().manual_seed(0)
        for layer in adapter.layers.values():  # as after a selection: a mask, the delta still dense
            layer.set_mask(select(torch.rand(layer.shape, generator=gen), KEEP_RATIO, None))
        params = adapter.parameters()
        before_step = adapter.before_step  # zeroes the gradient outside the mask, as the Trainer does
    elif method in ("sparse", "block-sparse", "full-qkv", "sparse-copy"):
        from hubtool.sparse.adapters import Adapter
        from hubtool.sparse.config import AdapterConfig

        kind = {"full-qkv": "full", "sparse-copy": "sparse"}.get(method, method)
        # mask_score "random" freezes at apply time: only the kept values exist, as after mask selection.
        cfg = AdapterConfig(method=kind, targets="qkv", keep_ratio=KEEP_RATIO, block_size=BLOCK, mask_score="random")
        adapter = Adapter.apply(model, cfg)
        params = adapter.parameters()
        if method != "sparse-copy":
            context = adapter.folded()  # as hubtool's Trainer runs its loop
    elif method == "floor":
        model.requires_grad_(False)
        # The embeddings' output asks for a gradient, so backward runs through every layer for dL/dx
        # (as it must for any adapter on these targets) but computes no weight gradient.
        model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.requires_grad_(True))
        params = []
    elif method == "masked-dense":
        params = masked_dense(model)
    elif method in ("lora", "lora+hub-loss"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=QKV))
        params = [p for p in model.parameters() if p.requires_grad]
    elif method == "shira":
        from peft import ShiraConfig, get_peft_model

        model = get_peft_model(model, ShiraConfig(r=shira_rank(model), target_modules=QKV, random_seed=0))
        params = [p for p in model.parameters() if p.requires_grad]
    elif method == "full-all":
        model.requires_grad_(True)
        params = list(model.parameters())
    else:
        raise SystemExit(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    model.train()
    return model, params, context, before_step


def masked_dense(model) -> list:
    """Wrap q/k/v in the paper's masked dense delta with a frozen random top-k mask; its deltas."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_memory import MaskedDenseDelta

    from hubtool.sparse.adapters import _replace
    from hubtool.sparse.masks import select
    from hubtool.sparse.targets import find_targets

    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    params = []
    for name in find_targets(model, "qkv"):
        module = MaskedDenseDelta(model.get_submodule(name), KEEP_RATIO)
        shape = tuple(module.delta.shape)
        keep = torch.zeros(shape[0] * shape[1])
        keep[select(torch.rand(shape, generator=gen), KEEP_RATIO, None)] = 1.0
        module.set_mask(keep.view(shape))  # what its SNIP selection leaves: mask, indices, grad hook
        _replace(model, name, module)
        params.append(module.delta)
    return params


def shira_rank(model) -> int:
    """r such that sum r(m+n) over the targets equals our sum keep_ratio*m*n (SHiRA's r is global)."""
    shapes = [m.weight.shape for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in QKV]
    ours = sum(int(KEEP_RATIO * o * i) for o, i in shapes)
    return max(1, round(ours / sum(o + i for o, i in shapes)))


def child(method: str, steps: int, warmup: int, threads: int | None, answer_tokens: int = 0) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, params, context, before_step = build(method)
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ))
    labels = ids.clone()
    if answer_tokens:
        labels[:, : SEQ - answer_tokens] = -100  # a prompt, then the answer: only the answer is scored
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    if answer_tokens and method in HUB_LOSS:
        from hubtool.sparse.loss import causal_lm_loss

        loss_of = lambda: causal_lm_loss(model, batch)
    else:
        loss_of = lambda: model(**batch).loss
    torch.use_deterministic_algorithms(True, warn_only=True)
    times, cpu = [], []
    with context:
        for step in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            loss_of().backward()
            if opt is not None:  # the floor trains nothing: forward + backward only
                if before_step is not None:
                    before_step(step + 1, opt)
                torch.nn.utils.clip_grad_norm_(params, 0.1)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {
        "method": method,
        "times": times,
        "cpu": cpu,  # process CPU seconds (all threads): steadier than wall time on a loaded machine
        "trainable": sum(p.numel() for p in params),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "threads": torch.get_num_threads(),
    }


# --- parent: interleave fresh children, print the table --------------------------------------------


def run_child(method: str, args, env: dict) -> dict:
    argv = [sys.executable, __file__, "--child", method, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--answer-tokens", str(args.answer_tokens)]
    done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="measured steps per child (after warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps per child")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every method once, interleaved")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help="'all' or a comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--small", action="store_true",
                    help="smoke run: 1 round x 1 step (no warm-up) of " + ",".join(SMALL_METHODS))
    ap.add_argument("--tcmalloc", action="store_true", help=f"children run with LD_PRELOAD={TCMALLOC}")
    ap.add_argument("--threads", type=int, help="torch threads per child (default: torch's own, = cores)")
    ap.add_argument("--answer-tokens", type=int, default=0,
                    help="score only the last N tokens of each sequence (a prompt, then an answer); 0: all")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.warmup, args.threads, args.answer_tokens)))
        return

    if args.small:
        args.rounds, args.steps, args.warmup = 1, 1, 0
        if args.methods == ",".join(DEFAULT_METHODS):
            args.methods = ",".join(SMALL_METHODS)
    if args.methods == "all":
        args.methods = ",".join(METHODS)
    env = dict(os.environ)
    env.setdefault("HUB_HOME", "/tmp/bench-home")
    env["TQDM_DISABLE"] = "1"
    allocator = "glibc malloc"
    if args.tcmalloc:
        if TCMALLOC.exists():
            env["LD_PRELOAD"] = str(TCMALLOC)
            allocator = f"tcmalloc ({TCMALLOC})"
        else:
            allocator = f"glibc malloc ({TCMALLOC} not found)"
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS) - set(HUB_LOSS)
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(METHODS + HUB_LOSS[-1:])}")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    started = time.perf_counter()
    for r in range(args.rounds):
        for m in methods:
            runs[m].append(run_child(m, args, env))
            print(f"round {r + 1}/{args.rounds} {m:13s} {statistics.median(runs[m][-1]['times']):.3f} s/step",
                  file=sys.stderr, flush=True)
    print_table(runs, args, allocator, time.perf_counter() - started)
    gpu_kernels()


def print_table(runs: dict[str, list[dict]], args, allocator: str, wall: float) -> None:
    step = {m: statistics.median(t for run in rs for t in run["times"]) for m, rs in runs.items()}
    cpu = {m: statistics.median(t for run in rs for t in run["cpu"]) for m, rs in runs.items()}
    rss = {m: statistics.median(run["peak_rss_mib"] for run in rs) for m, rs in runs.items()}
    first = next(iter(runs.values()))[0]
    scored = (f"loss on the last {args.answer_tokens} tokens (hub's answer-only loss for {', '.join(HUB_LOSS)})"
              if args.answer_tokens else "labels on all tokens")
    print(f"SmolLM2-135M fp32, CPU x{first['threads']} threads, batch {BATCH} x {SEQ} random tokens, {scored}, "
          f"targets qkv, {allocator}; median of {args.rounds} rounds x {args.steps} steps "
          f"(after {args.warmup} warm-up) per method; wall {wall:.0f} s")

    def ratio(num: float, den: float | None) -> str:
        return f"{num / den:.2f}" if den else "-"

    head = (f"{'method':14s} {'trainable':>11s} {'step s':>8s} {'x floor':>8s} {'x lora':>7s} {'tok/s':>7s} "
            f"{'cpu s':>7s} {'x floor':>8s} {'peak RSS MiB':>13s} {'x floor':>8s} {'x lora':>7s}")
    print(head)
    print("-" * len(head))
    for m, rs in runs.items():
        print(f"{m:14s} {rs[0]['trainable']:>11,d} {step[m]:8.3f} {ratio(step[m], step.get(FLOOR)):>8s} "
              f"{ratio(step[m], step.get(PEER)):>7s} {BATCH * SEQ / step[m]:7.0f} "
              f"{cpu[m]:7.2f} {ratio(cpu[m], cpu.get(FLOOR)):>8s} {rss[m]:13.0f} "
              f"{ratio(rss[m], rss.get(FLOOR)):>8s} {ratio(rss[m], rss.get(PEER)):>7s}")
    print_goals(runs, step, rss)


def paired(runs: dict[str, list[dict]], a: str, b: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of (a's median step / b's median step) within the same round."""
    per_round = [statistics.median(ra["times"]) / statistics.median(rb["times"]) for ra, rb in zip(runs[a], runs[b])]
    return statistics.median(per_round), min(per_round), max(per_round)


def print_goals(runs: dict[str, list[dict]], step: dict, rss: dict) -> None:
    """Issue 9's goals for sparse: <= 1.05x the floor, <= 1.0x LoRA, >= 1.5x faster than masked-dense,
    peak memory no more than theirs. Ratios of the same round (interleaved) are the fair ones."""
    if "sparse" not in runs:
        return
    print("\nsparse, ratios within each round (median [min, max] over rounds):")
    goals = (("floor", "x floor", 1.05, False), ("lora", "x lora", 1.0, False),
             ("masked-dense", "faster than masked-dense", 1.5, True))
    for other, label, goal, inverse in goals:
        if other not in runs:
            continue
        med, lo, hi = paired(runs, other, "sparse") if inverse else paired(runs, "sparse", other)
        met = med >= goal if inverse else med <= goal
        mem = rss["sparse"] / rss[other]
        print(f"  {label:26s} {med:5.2f} [{lo:.2f}, {hi:.2f}]  goal {'>=' if inverse else '<='} {goal:.2f}: "
              f"{'met' if met else 'NOT met'};  peak RSS x {mem:.2f} ({'<=' if mem <= 1.0 else '>'} 1)")


def gpu_kernels(reps: int = 50) -> None:
    """Triton kernels against the torch CUDA path on one q_proj-shaped layer, or say why not."""
    import torch

    if not torch.cuda.is_available():
        print("\nGPU: no CUDA device here; the Triton kernels vs torch CUDA timings are skipped.")
        return
    from hubtool.kernels import reference, triton_sparse

    if not triton_sparse.triton_available():
        print("\nGPU: CUDA present but triton is not importable (pip install 'hubtool[gpu]'); skipped.")
        return
    dev, (out_f, in_f), n = "cuda", (576, 576), BATCH * SEQ
    gen = torch.Generator(device=dev).manual_seed(0)
    kept = torch.randperm(out_f * in_f, device=dev, generator=gen)[: int(KEEP_RATIO * out_f * in_f)].sort().values
    values = torch.randn(kept.numel(), device=dev, generator=gen)
    g = torch.randn(n, out_f, device=dev, generator=gen)
    x = torch.randn(n, in_f, device=dev, generator=gen)
    w = torch.randn(out_f, in_f, device=dev, generator=gen)
    pattern = reference.csr_pattern(kept, (out_f, in_f))
    cases = {
        "scatter-add": (lambda: triton_sparse.sparse_scatter_add_(w, kept, values),
                        lambda: reference.sparse_scatter_add_(w, kept, values)),
        "kept-entry grad": (lambda: triton_sparse.sparse_grad_values(g, x, kept, (out_f, in_f)),
                            lambda: reference.sparse_grad_values(g, x, kept, (out_f, in_f), pattern)),
    }

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps  # ms

    print(f"\nGPU {torch.cuda.get_device_name()}: q_proj [{out_f}, {in_f}], N = {n}, {kept.numel()} kept, ms per call")
    for name, (tri, tor) in cases.items():
        t_tri, t_tor = timed(tri), timed(tor)
        print(f"  {name:16s} triton {t_tri:8.3f}  torch {t_tor:8.3f}  triton x torch {t_tri / t_tor:.2f}")


if __name__ == "__main__":
    main()
