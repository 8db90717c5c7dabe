"""Evaluation throughput of hubtool.evaluate on SmolLM2-135M (CPU): examples/s, fp32 against bf16.

    HUB_HOME=/tmp/bench-home .venv/bin/python benchmarks/eval_throughput.py [--limit 32] [--batch-size 8]

Two kinds of task, the two code paths of hubtool.evaluate:
  classification  commonsenseqa (5 options, each scored by log-likelihood; one forward per batch of
                  (prompt, option) pairs)
  generation      nq_open, greedy, max_new_tokens 16, KV cache, batches sorted by prompt length
Each (task, dtype) runs in a fresh child process (one untimed warm-up batch first, so lazy
initialisation is not counted), interleaved over --rounds; the table reports the median examples/s.
load_base keeps the converted folder's dtype (bf16) unless asked otherwise, hence both dtypes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TASKS = {"commonsenseqa": "classification", "nq_open": "generation"}
DTYPES = ("float32", "bfloat16")


def child(task: str, dtype: str, limit: int, batch_size: int, max_new_tokens: int) -> dict:
    import torch

    from hubtool.data import load_task
    from hubtool.evaluate import evaluate
    from hubtool.models import load_base

    model, tokenizer = load_base("smollm2-135m", dtype=getattr(torch, dtype))
    data = load_task(task)
    # Warm-up on one batch of other examples: first-call costs (allocator, kernels) are not throughput.
    warm = with_test_split(data, data.validation[:batch_size])
    evaluate(model, tokenizer, warm, limit=batch_size, batch_size=batch_size, max_new_tokens=max_new_tokens)
    scores = evaluate(model, tokenizer, data, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return {"task": task, "dtype": dtype, **scores, "threads": torch.get_num_threads()}


def with_test_split(data, examples):
    """The same task with `examples` as its test split (the warm-up set)."""
    from dataclasses import replace

    return replace(data, test=list(examples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=32, help="test examples per task")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="fresh runs of every (task, dtype), interleaved")
    ap.add_argument("--child", nargs=2, metavar=("TASK", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.limit, args.batch_size, args.max_new_tokens)))
        return

    env = dict(os.environ)
    env.setdefault("HUB_HOME", "/tmp/bench-home")
    env["TQDM_DISABLE"] = "1"
    runs: dict[tuple[str, str], list[dict]] = {(t, d): [] for t in TASKS for d in DTYPES}
    started = time.perf_counter()
    for r in range(args.rounds):
        for (task, dtype), results in runs.items():
            argv = [sys.executable, __file__, "--child", task, dtype, "--limit", str(args.limit),
                    "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)]
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{task} {dtype} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {task} {dtype}: {results[-1]['examples_per_s']:.2f} ex/s",
                  file=sys.stderr, flush=True)

    first = next(iter(runs.values()))[0]
    print(f"SmolLM2-135M, CPU x{first['threads']} threads, hubtool.evaluate, test split, limit {args.limit}, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens} (generation); "
          f"median of {args.rounds} fresh runs; wall {time.perf_counter() - started:.0f} s")
    head = f"{'task':14s} {'kind':14s} {'dtype':9s} {'n':>3s} {'ex/s':>7s} {'s':>7s} {'metric':>18s}"
    print(head)
    print("-" * len(head))
    for (task, dtype), rs in runs.items():
        rate = statistics.median(r["examples_per_s"] for r in rs)
        metric = "accuracy" if "accuracy" in rs[0] else "rougeL"
        print(f"{task:14s} {TASKS[task]:14s} {dtype:9s} {int(rs[0]['n']):3d} {rate:7.2f} "
              f"{statistics.median(r['seconds'] for r in rs):7.2f} {metric + f' {rs[0][metric]:.1f}':>18s}")
    for task in TASKS:
        fp32 = statistics.median(r["examples_per_s"] for r in runs[task, "float32"])
        bf16 = statistics.median(r["examples_per_s"] for r in runs[task, "bfloat16"])
        print(f"{task}: bf16 / fp32 throughput = {bf16 / fp32:.2f}x ({'bf16' if bf16 > fp32 else 'fp32'} is faster)")


if __name__ == "__main__":
    main()
