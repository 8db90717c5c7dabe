"""Option scoring with a shared prompt prefix, against the full-sequence path and lm-evaluation-harness:
examples/s on the same examples and the same rendered prompts (SmolLM2-135M, fp32, CPU).

    HUB_HOME=/tmp/bench-home .venv/bin/python benchmarks/option_scoring.py [--limit 32] [--batch-size 8]
        [--rounds 3] [--tasks commonsenseqa,boolq] [--threads 1] [--lm-eval-batch-size N]

Three scorers of the same test examples, one process, one fp32 model each:
  shared   hubtool.evaluate.option_logprobs: each prompt runs once, its options from its KV cache;
           --batch-size examples per forward (`hub eval --batch-size`: "examples per forward pass")
  full     hubtool.evaluate._option_logprobs_full, the path it replaced: every (prompt, option) pair a
           full sequence, --batch-size pairs per forward
  lm-eval  HFLM.loglikelihood on the (context, continuation) requests its multiple_choice task builds from
           the contexts benchmarks/lm_eval_agreement.py renders (hub's own prompts); --lm-eval-batch-size
           requests per forward (default --batch-size). Only the scoring call is timed: the task set-up of
           simple_evaluate is left out, which favours lm-eval. lm-eval runs a context once for options of
           one token (its logits cache), so on a yes/no task it shares the prompt as well.
Each call includes tokenisation. One untimed warm-up call per scorer first (validation examples); then
--rounds rounds, each running every (task, scorer) once, in an order rotated per round; medians reported,
and the ratios shared / lm-eval and shared / full. The chosen options are compared too: shared against full
(and the largest log-prob difference), lm-eval against full (lm-eval adds the same log p(trailing
whitespace) to every option, which cannot change a choice).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SCORERS = ("shared", "full", "lm-eval")


def lm_eval_requests(tokenizer: Any, examples: list[Any]) -> list[Any]:
    """lm-eval's loglikelihood requests for the examples, as its multiple_choice task builds them from the
    agreement benchmark's rendering: (context, target_delimiter + option), one per option, in order."""
    from lm_eval.api.instance import Instance
    from lm_eval_agreement import answer_delimiter

    from hubtool.data.prompts import format_prompt

    contexts = [format_prompt(tokenizer, e.input) for e in examples]
    delimiter = answer_delimiter(tokenizer, contexts)
    return [Instance("loglikelihood", {}, (c, delimiter + o), j)
            for c, e in zip(contexts, examples) for j, o in enumerate(e.options)]


def per_example(flat: list[float], examples: list[Any]) -> list[list[float]]:
    out, start = [], 0
    for e in examples:
        out.append(flat[start : start + len(e.options)])
        start += len(e.options)
    return out


def argmax(row: list[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=32, help="test examples per task (the first N)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lm-eval-batch-size", type=int, help="lm-eval's requests per forward (default --batch-size)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", default="commonsenseqa,boolq", help="multiple-choice tasks, comma-separated")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--threads", type=int, help="torch threads (default torch's; 1 is faster on busy cores)")
    ap.add_argument("--json", type=Path, help="also write the per-round timings here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    logging.getLogger("lm_eval").setLevel(logging.WARNING)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval_agreement import make_lm

    from hubtool.data import load_task
    from hubtool.data.prompts import has_chat_template
    from hubtool.evaluate import _option_logprobs_full, option_logprobs
    from hubtool.models import load_base, resolve_base

    started = time.perf_counter()
    folder = resolve_base(args.base)[0]
    model, tokenizer = load_base(args.base, dtype=torch.float32)
    lm_batch = args.lm_eval_batch_size or args.batch_size
    lm = make_lm(folder, batch_size=lm_batch, chat=has_chat_template(tokenizer))
    tasks = {name: load_task(name) for name in args.tasks.split(",")}
    tests = {name: data.test[: args.limit] for name, data in tasks.items()}

    def run(scorer: str, examples: list[Any]) -> list[list[float]]:
        with torch.inference_mode():
            if scorer == "shared":
                return option_logprobs(model, tokenizer, examples, batch_size=args.batch_size)
            if scorer == "full":
                return _option_logprobs_full(model, tokenizer, examples, batch_size=args.batch_size)
        lls = lm.loglikelihood(lm_eval_requests(tokenizer, examples), disable_tqdm=True)
        return per_example([float(ll) for ll, _ in lls], examples)

    for data in tasks.values():  # warm-up: first-call costs (allocator, kernels) are not throughput
        for scorer in SCORERS:
            run(scorer, data.validation[: args.batch_size])

    seconds: dict[tuple[str, str], list[float]] = {(t, s): [] for t in tests for s in SCORERS}
    scores: dict[tuple[str, str], list[list[float]]] = {}
    order = [(t, s) for t in tests for s in SCORERS]
    for r in range(args.rounds):
        shift = r % len(order)
        for task, scorer in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            scores[task, scorer] = run(scorer, tests[task])
            seconds[task, scorer].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds} {task} {scorer}: {len(tests[task]) / seconds[task, scorer][-1]:.2f} ex/s",
                  file=sys.stderr, flush=True)

    print(f"{args.base} fp32, CPU x{torch.get_num_threads()} threads, first {args.limit} test examples, batch "
          f"{args.batch_size} (shared: examples, full: pairs), lm-eval batch {lm_batch} (requests); median of "
          f"{args.rounds} interleaved rounds; wall {time.perf_counter() - started:.0f} s")
    head = f"{'task':14s} {'options':>7s} {'scorer':8s} {'ex/s':>7s} {'s':>7s} {'shared/this':>11s}"
    print(head)
    print("-" * len(head))
    summary: dict[str, Any] = {}
    for task, examples in tests.items():
        rate = {s: len(examples) / statistics.median(seconds[task, s]) for s in SCORERS}
        n_options = statistics.median(len(e.options) for e in examples)
        for s in SCORERS:
            print(f"{task:14s} {n_options:7g} {s:8s} {rate[s]:7.2f} {statistics.median(seconds[task, s]):7.2f} "
                  f"{rate['shared'] / rate[s]:10.2f}x")
        shared, full, lm_scores = (scores[task, s] for s in SCORERS)
        worst = max(abs(a - b) for x, y in zip(shared, full) for a, b in zip(x, y))
        same = sum(argmax(x) == argmax(y) for x, y in zip(shared, full))
        same_lm = sum(argmax(x) == argmax(y) for x, y in zip(lm_scores, full))
        print(f"{task}: shared vs full: same choice {same}/{len(examples)}, largest log-prob difference "
              f"{worst:.2g} nats; lm-eval vs full: same choice {same_lm}/{len(examples)}")
        summary[task] = {"rates": rate, "seconds": {s: seconds[task, s] for s in SCORERS},
                         "same_choice": same, "same_choice_lm_eval": same_lm, "max_diff": worst}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
