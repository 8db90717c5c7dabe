"""Training step time and peak memory on SmolLM2-135M (CPU): our sparse experts against their peers.

    HUB_HOME=/tmp/bench-home .venv/bin/python benchmarks/train_speed.py [--steps 3] [--rounds 3] [--tcmalloc]

Setting (the same for every method): fp32 weights (as `hub train` loads them), a fixed batch of
8 x 128 random token ids with labels on every token, AdamW, gradient clipping, targets qkv
(q_proj/k_proj/v_proj of all 30 layers), deterministic algorithms on (as hubtool's Trainer runs on CPU).
One step = forward + backward + clip + optimizer step + zero_grad.

Methods:
  sparse        ours, keep ratio 0.05, mask frozen from the start (the steady state of a run)
  block-sparse  ours, 16 x 16 tiles, same keep ratio
  lora          PEFT LoRA r=4, alpha 16 (peft.get_peft_model), the named peer
  full-qkv      ours, full fine-tuning of the target weights (a dense delta per weight)
  full-all      plain torch: every parameter requires grad
  shira         PEFT SHiRA, r chosen so its trainable entries match ours (r(m+n) per weight)

Each (method, round) runs in a fresh child process, so peak RSS (ru_maxrss of that child) is its own;
methods are interleaved round by round so that load from other processes on the shared cores hits
all of them alike, and the table reports medians over all measured steps of all rounds.
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

METHODS = ("sparse", "block-sparse", "lora", "full-qkv", "full-all", "shira")
# With --answer-tokens, methods that train through hub's Trainer use its loss (the output layer runs only
# at answer positions, hubtool.sparse.loss); the peers use transformers' own loss, as a PEFT user's loop
# does. "lora+hub-loss" is PEFT LoRA with our loss, to show how much of a gap is the loss, not the adapter.
HUB_LOSS = ("sparse", "block-sparse", "full-qkv", "lora+hub-loss")
PEER = "lora"
BATCH, SEQ, KEEP_RATIO, BLOCK = 8, 128, 0.05, 16
QKV = ["q_proj", "k_proj", "v_proj"]
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


# --- child: one method, a few steps -----------------------------------------------------------------


def build(method: str):
    """(model in train mode, its trainable parameters) for one method."""
    import torch

    from hubtool.models import load_base

    model, _ = load_base("smollm2-135m", dtype=torch.float32)
    if method in ("sparse", "block-sparse", "full-qkv"):
        from hubtool.sparse.adapters import Adapter
        from hubtool.sparse.config import AdapterConfig

        kind = "full" if method == "full-qkv" else method
        # mask_score "random" freezes at apply time: only the kept values exist, as after mask selection.
        cfg = AdapterConfig(method=kind, targets="qkv", keep_ratio=KEEP_RATIO, block_size=BLOCK, mask_score="random")
        params = Adapter.apply(model, cfg).parameters()
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
    return model, params


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
    model, params = build(method)
    opt = torch.optim.AdamW(params, lr=1e-4)
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
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        loss_of().backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return {
        "method": method,
        "times": times,
        "trainable": sum(p.numel() for p in params),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "threads": torch.get_num_threads(),
    }


# --- parent: interleave fresh children, print the table --------------------------------------------


def run_child(method: str, args, env: dict) -> dict:
    argv = [sys.executable, __file__, "--child", method, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--answer-tokens", str(args.answer_tokens)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="measured steps per child (after warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps per child")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every method once, interleaved")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--tcmalloc", action="store_true", help=f"children run with LD_PRELOAD={TCMALLOC}")
    ap.add_argument("--threads", type=int, help="torch threads per child (default: torch's own, = cores)")
    ap.add_argument("--answer-tokens", type=int, default=0,
                    help="score only the last N tokens of each sequence (a prompt, then an answer); 0: all")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.warmup, args.threads, args.answer_tokens)))
        return

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


def print_table(runs: dict[str, list[dict]], args, allocator: str, wall: float) -> None:
    step = {m: statistics.median(t for run in rs for t in run["times"]) for m, rs in runs.items()}
    rss = {m: statistics.median(run["peak_rss_mib"] for run in rs) for m, rs in runs.items()}
    peer_step, peer_rss = step.get(PEER), rss.get(PEER)
    first = next(iter(runs.values()))[0]
    scored = (f"loss on the last {args.answer_tokens} tokens (hub's answer-only loss for {', '.join(HUB_LOSS)})"
              if args.answer_tokens else "labels on all tokens")
    print(f"SmolLM2-135M fp32, CPU x{first['threads']} threads, batch {BATCH} x {SEQ} random tokens, {scored}, "
          f"targets qkv, {allocator}; median of {args.rounds} rounds x {args.steps} steps "
          f"(after {args.warmup} warm-up) per method; wall {wall:.0f} s")
    head = f"{'method':14s} {'trainable':>10s} {'step s':>8s} {'x lora':>7s} {'tok/s':>7s} {'peak RSS MiB':>13s} {'x lora':>7s}"
    print(head)
    print("-" * len(head))
    for m, rs in runs.items():
        ratio = f"{step[m] / peer_step:.2f}" if peer_step else "-"
        mem_ratio = f"{rss[m] / peer_rss:.2f}" if peer_rss else "-"
        print(f"{m:14s} {rs[0]['trainable']:>10,d} {step[m]:8.3f} {ratio:>7s} {BATCH * SEQ / step[m]:7.0f} "
              f"{rss[m]:13.0f} {mem_ratio:>7s}")


if __name__ == "__main__":
    main()
