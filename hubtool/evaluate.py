"""Scoring a causal LM on a task: greedy generation, or log-likelihood choice among options.

- Examples without options: batched greedy generation with the KV cache (left-padded so every row's
  new tokens start at the same position), batches sorted by prompt length so little padding is
  computed; the prompt is stripped and the text cut at the first EOS.
- Examples with options: each option is scored by the summed log-probability of its tokens after the
  prompt; the prompt runs once per example and its KV cache serves every option (option_logprobs);
  the best option is the prediction.

Metrics are reported in percent (Rouge-L x 100 as the paper reports it), with examples/s.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubtool.data.metrics import accuracy, exact_match, rouge_l
from hubtool.data.prompts import has_chat_template, prompt_answer_ids, prompt_ids
from hubtool.data.tasks import Example, TaskData
from hubtool.errors import HubError

if TYPE_CHECKING:
    import torch


@dataclass
class Prediction:
    example: Example
    text: str
    option_logprobs: list[float] | None = None  # summed log-prob (nats) of each option, when scored


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _left_pad(rows: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, T] and attention_mask [B, T] with rows aligned on the right (T = longest row)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config (chat models often have several)."""
    ids = [tokenizer.eos_token_id]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += config_eos if isinstance(config_eos, list) else [config_eos]
    return list(dict.fromkeys(i for i in ids if i is not None))


def pad_id(tokenizer: Any) -> int:
    # Padded positions are masked out, so any id works when the tokenizer defines no pad token.
    for i in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if i is not None:
            return i
    return 0


def _cut(ids: list[int], max_prompt_tokens: int | None) -> list[int]:
    """A prompt cut from the left to its last max_prompt_tokens tokens, as training cuts it: the end,
    where the question and the answer cue sit, survives."""
    return ids if not max_prompt_tokens or len(ids) <= max_prompt_tokens else ids[-max_prompt_tokens:]


def model_window(model: Any) -> int | None:
    """The most positions the model can attend over (its config's max_position_embeddings), or None."""
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return window if isinstance(window, int) and window > 0 else None


def prompt_budget(model: Any, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int | None:
    """Most prompt tokens a greedy answer of max_new_tokens leaves room for in the model's window (and
    at most max_prompt_tokens); None when neither bounds it. A HubError when nothing is left."""
    window = model_window(model)
    if window is None:
        return max_prompt_tokens
    room = window - max_new_tokens
    if room < 1:
        raise HubError(
            f"--max-new-tokens {max_new_tokens}: leaves no room for the prompt in the model's window of "
            f"{window} positions; expected at most {window - 1}"
        )
    return room if max_prompt_tokens is None else min(room, max_prompt_tokens)


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 64,
             batch_size: int = 8, max_prompt_tokens: int | None = None) -> list[str]:
    """Greedy answers to task prompts, in the order given. Prompts are cut from the left to what the
    model's window leaves after max_new_tokens (and to max_prompt_tokens): past its window a model
    with learned positions fails outright and one with rotary ones writes noise."""
    from transformers import GenerationConfig

    budget = prompt_budget(model, max_new_tokens, max_prompt_tokens) if prompts else None
    ids = [_cut(prompt_ids(tokenizer, p), budget) for p in prompts]
    stops = stop_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              pad_token_id=pad_id(tokenizer), eos_token_id=stops or None)
    # Without a chat template a base model keeps writing past its answer (the next "Question: ..."),
    # and answers are one line, so the first line is the answer.
    first_line = not has_chat_template(tokenizer)
    answers = [""] * len(ids)
    for batch in _batches(sorted(range(len(ids)), key=lambda i: -len(ids[i])), batch_size):
        input_ids, mask = _left_pad([ids[i] for i in batch], pad_id(tokenizer), model.device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        for i, row in zip(batch, out[:, input_ids.shape[1]:].tolist()):
            cut = min((row.index(s) for s in stops if s in row), default=len(row))
            text = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
            answers[i] = text.split("\n", 1)[0].strip() if first_line else text
    return answers


def option_logprobs(model: Any, tokenizer: Any, examples: Sequence[Example], *,
                    batch_size: int = 8, max_prompt_tokens: int | None = None) -> list[list[float]]:
    """Per example, the summed log-prob of each option's tokens given the prompt.

    The prompt runs once per example, not once per option: prompt_answer_ids encodes the prompt alone, so
    its ids are the same for every option, and its KV cache serves them all. One forward over batch_size
    examples' prompts, then one over their options' tokens on the cache repeated once per option (an
    option of one token needs no second forward: the prompt's last logit scores it). The scores equal the
    full (prompt, option) sequences' (_option_logprobs_full) up to fp32 rounding (~1e-6). An example whose
    options cut its prompt differently (an option long enough to push the prompt's start out of the
    model's window) is scored as full sequences; batch_size then counts (prompt, option) sequences."""
    encoded = _encode_options(model, tokenizer, examples, max_prompt_tokens)
    scores = [[0.0] * len(rows) for rows in encoded]
    shared, alone = [], []
    for i, rows in enumerate(encoded):
        (shared if all(p == rows[0][0] for p, _ in rows) else alone).append(i)
    _score_shared(model, tokenizer, [(i, encoded[i][0][0], [o for _, o in encoded[i]]) for i in shared if encoded[i]],
                  batch_size, scores)
    _score_full(model, tokenizer, [(i, j, p + o, len(o)) for i in alone for j, (p, o) in enumerate(encoded[i])],
                batch_size, scores)
    return scores


def _option_logprobs_full(model: Any, tokenizer: Any, examples: Sequence[Example], *,
                          batch_size: int = 8, max_prompt_tokens: int | None = None) -> list[list[float]]:
    """option_logprobs as it was: every (prompt, option) pair a full sequence, batch_size of them per
    forward. The reference the shared-prefix path is tested and benchmarked against."""
    encoded = _encode_options(model, tokenizer, examples, max_prompt_tokens)
    scores = [[0.0] * len(rows) for rows in encoded]
    _score_full(model, tokenizer, [(i, j, p + o, len(o)) for i, rows in enumerate(encoded) for j, (p, o) in enumerate(rows)],
                batch_size, scores)
    return scores


def _encode_options(model: Any, tokenizer: Any, examples: Sequence[Example],
                    max_prompt_tokens: int | None) -> list[list[tuple[list[int], list[int]]]]:
    """Per example, per option: (prompt ids, option ids), the prompt cut from the left so that prompt +
    option fit the model's window (and to max_prompt_tokens). HubErrors for an option as long as the
    window and for a prompt of no tokens."""
    window = model_window(model)
    encoded = []
    for i, example in enumerate(examples):
        rows = []
        for j, option in enumerate(example.options or []):
            p_ids, o_ids = prompt_answer_ids(tokenizer, example.input, option)
            if window is not None and len(o_ids) >= window:
                raise HubError(
                    f"example {i}: option {j} is {len(o_ids)} tokens, as long as the model's window of {window}"
                )
            # The prompt keeps its end and gives way to the option: prompt + option fit the window.
            room = None if window is None else window - len(o_ids)
            cut = room if max_prompt_tokens is None else (max_prompt_tokens if room is None else min(room, max_prompt_tokens))
            p_ids = _cut(p_ids, cut)
            if not p_ids:
                raise HubError(f"prompt of example {i} encodes to no tokens: nothing to condition the options on")
            rows.append((p_ids, o_ids))
        encoded.append(rows)
    return encoded


def _score_full(model: Any, tokenizer: Any, pairs: list[tuple[int, int, list[int], int]], batch_size: int,
                scores: list[list[float]]) -> None:
    """scores[i][j] for each (i, j, prompt ids + option ids, number of option ids): batch_size sequences per
    forward, longest first so a batch's rows are of like length."""
    import torch

    for batch in _batches(sorted(range(len(pairs)), key=lambda n: -len(pairs[n][2])), batch_size):
        rows = [pairs[n] for n in batch]
        input_ids, mask = _left_pad([r[2] for r in rows], pad_id(tokenizer), model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        k = max(r[3] for r in rows)
        # Left-aligned rows all end at T-1, so every option sits in the last k positions; the logits at
        # the last k+1 positions predict them (the very last logit predicts nothing and is dropped).
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=k + 1).logits[:, :-1]  # [B, k, V]
        logp = logits.float().log_softmax(-1)
        token_logp = logp.gather(-1, input_ids[:, -k:, None]).squeeze(-1)  # [B, k]
        n_option = torch.tensor([r[3] for r in rows], device=token_logp.device)
        in_option = torch.arange(k, device=token_logp.device)[None, :] >= (k - n_option)[:, None]  # [B, k]
        sums = torch.where(in_option, token_logp, 0.0).sum(-1)
        for (i, j, _, _), s in zip(rows, sums.tolist()):
            scores[i][j] = s


def _score_shared(model: Any, tokenizer: Any, items: list[tuple[int, list[int], list[list[int]]]], batch_size: int,
                  scores: list[list[float]]) -> None:
    """scores[i][j] for each (i, prompt ids, option ids per option j), the prompt run once: batch_size
    examples per forward, longest prompt first so a batch's prompts are of like length."""
    import torch

    pad = pad_id(tokenizer)
    for batch in _batches(sorted(range(len(items)), key=lambda n: -len(items[n][1])), batch_size):
        rows = [items[n] for n in batch]
        input_ids, mask = _left_pad([r[1] for r in rows], pad, model.device)  # [B, P]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        # Left-padded prompts all end at P-1, whose logit predicts every option's first token.
        first = out.logits[:, -1].float().log_softmax(-1)  # [B, V]
        # One row per option: its example's row b in the batch, its ids; an option of no ids scores 0.
        owners = [(b, i, j, o) for b, (i, _, options) in enumerate(rows) for j, o in enumerate(options) if o]
        if not owners:
            continue
        owner = torch.tensor([b for b, _, _, _ in owners], device=first.device)  # [R]
        heads = torch.tensor([o[0] for _, _, _, o in owners], device=first.device)  # [R]
        head_logp = first[owner, heads]  # [R]: log p(first option token | prompt)
        # Tokens 1.. of the options of two or more tokens, predicted by the logits at their tokens 0..n-2
        # fed on the prompt's cache; rows are right-padded (no kept position attends to a pad).
        tails = [r for r, (_, _, _, o) in enumerate(owners) if len(o) > 1]
        tail_logp = torch.zeros(len(owners), device=first.device)  # [R]
        if tails:
            k = max(len(owners[r][3]) for r in tails) - 1
            ids = torch.full((len(tails), k), pad, dtype=torch.long)
            targets = torch.zeros((len(tails), k), dtype=torch.long)
            in_option = torch.zeros((len(tails), k), dtype=torch.long)
            for t, r in enumerate(tails):
                o = owners[r][3]
                ids[t, : len(o) - 1] = torch.tensor(o[:-1], dtype=torch.long)
                targets[t, : len(o) - 1] = torch.tensor(o[1:], dtype=torch.long)
                in_option[t, : len(o) - 1] = 1
            ids, targets, in_option = ids.to(model.device), targets.to(model.device), in_option.to(model.device)
            tail_owner = owner[torch.tensor(tails, device=owner.device)]  # [R']
            name = _cache_argument(model)
            cache = out.get(name)
            cache.reorder_cache(tail_owner)  # [B, heads, P, d] -> [R', heads, P, d]: a copy per option
            starts = mask.sum(-1)[tail_owner]  # [R']: the prompt's real length, the option's first position
            logits = model(input_ids=ids, attention_mask=torch.cat([mask[tail_owner], in_option], dim=1),
                           position_ids=starts[:, None] + torch.arange(k, device=ids.device)[None, :],
                           use_cache=True, **{name: cache}).logits  # [R', k, V]
            token_logp = logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # [R', k]
            tail_logp[tails] = torch.where(in_option.bool(), token_logp, 0.0).sum(-1)
        for (_, i, j, _), s in zip(owners, (head_logp + tail_logp).tolist()):
            scores[i][j] = s


def _cache_argument(model: Any) -> str:
    """The name a model's forward takes its KV cache by, and its output gives it by: "cache" in recent
    transformers, "past_key_values" in older ones (recent ones still take it, with a deprecation warning)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def predict(model: Any, tokenizer: Any, examples: Sequence[Example], *, max_new_tokens: int = 64,
            batch_size: int = 8, max_prompt_tokens: int | None = None) -> list[Prediction]:
    import torch

    with_options = [n for n, e in enumerate(examples) if e.options]
    free_form = [n for n, e in enumerate(examples) if not e.options]
    predictions: list[Prediction | None] = [None] * len(examples)
    with torch.inference_mode():
        texts = generate(model, tokenizer, [examples[n].input for n in free_form],
                         max_new_tokens=max_new_tokens, batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
        for n, text in zip(free_form, texts):
            predictions[n] = Prediction(examples[n], text)
        scores = option_logprobs(model, tokenizer, [examples[n] for n in with_options], batch_size=batch_size,
                                 max_prompt_tokens=max_prompt_tokens)
        for n, s in zip(with_options, scores):
            options = examples[n].options or []
            predictions[n] = Prediction(examples[n], options[max(range(len(s)), key=s.__getitem__)], s)
    return [p for p in predictions if p is not None]


def metrics_of(predictions: Sequence[Prediction]) -> dict[str, float]:
    """rougeL and exact_match over all predictions, accuracy and accuracy_norm over those with options;
    in percent."""
    if not predictions:
        raise HubError("no predictions to score")
    n = len(predictions)
    metrics = {
        "rougeL": 100 * sum(rouge_l(p.text, p.example.references) for p in predictions) / n,
        "exact_match": 100 * sum(exact_match(p.text, p.example.references) for p in predictions) / n,
    }
    chosen = [p for p in predictions if p.option_logprobs is not None]
    if chosen:
        metrics["accuracy"] = 100 * accuracy([p.text for p in chosen], [p.example.output for p in chosen])
        # Summed log-probs favour short options; accuracy_norm divides by the option's length in
        # characters first (lm-evaluation-harness's acc_norm), fairer when option lengths differ a lot.
        normed = [_by_length(p) for p in chosen]
        metrics["accuracy_norm"] = 100 * accuracy(normed, [p.example.output for p in chosen])
    return metrics


def _by_length(p: Prediction) -> str:
    """The option with the highest log-prob per character of its text (lm-eval's acc_norm; its
    acc_bytes divides by UTF-8 bytes, the same on ASCII options)."""
    options, logps = p.example.options or [], p.option_logprobs or []
    per_char = [lp / max(1, len(o)) for o, lp in zip(options, logps)]
    return options[max(range(len(per_char)), key=per_char.__getitem__)]


def scored_examples(task: TaskData | str, *, split: str, limit: int | None, max_new_tokens: int, batch_size: int,
                    max_prompt_tokens: int | None) -> list[Example]:
    """The examples an evaluation scores (the first `limit` of the split), its options checked first: the
    rules of `hub eval`'s options, for library callers too (a limit of -1 would drop one example)."""
    from hubtool import checks

    checks.optional_count(limit, "--limit")
    checks.count(batch_size, "--batch-size")
    checks.count(max_new_tokens, "--max-new-tokens")
    checks.optional_count(max_prompt_tokens, "--max-prompt-tokens")
    if isinstance(task, str):  # a name: a file, folder, built-in or the default catalog's task
        from hubtool.registry.task_loader import load_task

        task = load_task(task)
    examples = task.split(split)[:limit]
    if not examples:
        raise HubError(f"task {task.name!r} has no examples in split {split!r}")
    return examples


def evaluate(model: Any, tokenizer: Any, task: TaskData | str, *, split: str = "test", limit: int | None = None,
             max_new_tokens: int = 64, batch_size: int = 8, predictions: list[Prediction] | None = None,
             max_prompt_tokens: int | None = None) -> dict[str, float]:
    """Metrics of `model` on a split of `task` (a TaskData or a name for load_task): rougeL, exact_match,
    accuracy (tasks with options) in percent, plus n, seconds and examples_per_s. Pass a list as
    `predictions` to receive the per-example predictions. max_prompt_tokens cuts each prompt from the
    left as training does (an expert trained with --max-length L is scored on what it saw)."""
    examples = scored_examples(task, split=split, limit=limit, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
    was_training = model.training
    model.eval()
    try:
        start = time.perf_counter()
        results = predict(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          max_prompt_tokens=max_prompt_tokens)
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    if predictions is not None:
        predictions.extend(results)
    return {**metrics_of(results), "n": float(len(results)), "seconds": seconds, "examples_per_s": len(results) / seconds}


# Keys of evaluate()'s result that describe the run, not the model's quality: never stored as metrics.
RUN_KEYS = ("examples", "examples_per_s", "seconds", "n")


@dataclass
class Scored:
    """One evaluation of one model on one split of one task: what every caller stores (Scored.store)."""

    task: str
    split: str
    settings: dict[str, Any]  # limit, max_new_tokens, max_prompt_tokens, batch_size: what makes it reproducible
    metrics: dict[str, float]  # quality only: rougeL, exact_match[, accuracy, accuracy_norm], in percent
    run: dict[str, float]  # n, seconds, examples_per_s
    rows: list[dict[str, Any]]  # example_rows(): the per-example outcomes a paired bootstrap needs

    def store(self, catalog: Any, ref: str | None = None, *, base_model: str | None = None,
              base_revision: str | None = None) -> None:  # fmt: skip
        """Into the catalog: the per-example rows (for an expert version `ref`, or with ref=None for
        `base_model`), and on the test split the metrics as well: on the expert's row, or as the base
        model's baseline. Validation scores choose settings; only test scores are the row's metrics."""
        catalog.set_examples(ref, self.task, self.rows, base_model=None if ref else base_model,
                             base_revision=None if ref else base_revision, split=self.split,
                             settings=self.settings)  # fmt: skip
        if self.split != "test":
            return
        if ref is not None:
            catalog.set_metrics(ref, self.task, self.metrics)
        elif base_model is not None:
            catalog.set_base_metrics(base_model, self.task, self.metrics, revision=base_revision)


def score(model: Any, tokenizer: Any, task: TaskData | str, *, split: str = "test", limit: int | None = None,
          max_new_tokens: int = 64, batch_size: int = 8, max_prompt_tokens: int | None = None) -> Scored:
    """The one scoring path of `hub eval`, `hub train`'s final eval, `hub compose --eval` and `hub experiment`:
    evaluate() (the model as it is: experts applied by the caller), its metrics split from the run's facts,
    and the per-example rows."""
    if isinstance(task, str):  # a name: a file, folder, built-in or the default catalog's task
        from hubtool.registry.task_loader import load_task

        task = load_task(task)
    predictions: list[Prediction] = []
    result = evaluate(model, tokenizer, task, split=split, limit=limit, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, predictions=predictions, max_prompt_tokens=max_prompt_tokens)
    settings = {"split": split, "limit": limit, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                "max_prompt_tokens": max_prompt_tokens}  # fmt: skip
    return Scored(
        task=task.name, split=split, settings=settings,
        metrics={k: float(v) for k, v in result.items() if k not in RUN_KEYS},
        run={k: float(v) for k, v in result.items() if k in RUN_KEYS},
        rows=example_rows(predictions),
    )  # fmt: skip


def example_key(example: Example) -> str:
    """12 hex digits of the sha256 of the example's input: what pairs an example across evaluations
    beside its index (a changed prompt at the same index shows as a different key)."""
    import hashlib

    return hashlib.sha256(example.input.encode()).hexdigest()[:12]


def example_rows(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """One row per prediction, in split order (what the catalog's eval_examples stores):
    {"idx": index in the split, "key": example_key, "value": the headline metric in percent (accuracy 0/100
    with options, else rougeL), "metrics": {rougeL, exact_match[, accuracy, accuracy_norm]} in percent,
    "gold_logprob": summed log-prob of the gold option (None without options), "text": the prediction}.

    The metric functions are metrics_of()'s, so each metric's mean over the rows that have it is its value;
    predictions must be evaluate()'s, in split order from its first example (idx is the position)."""
    rows = []
    for i, p in enumerate(predictions):
        metrics = {
            "rougeL": 100 * rouge_l(p.text, p.example.references),
            "exact_match": 100 * exact_match(p.text, p.example.references),
        }
        gold_logprob = None
        if p.option_logprobs is not None:
            metrics["accuracy"] = 100 * accuracy([p.text], [p.example.output])
            metrics["accuracy_norm"] = 100 * accuracy([_by_length(p)], [p.example.output])
            options = p.example.options or []
            if p.example.output in options:
                gold_logprob = p.option_logprobs[options.index(p.example.output)]
        rows.append({
            "idx": i,
            "key": example_key(p.example),
            "value": metrics["accuracy"] if "accuracy" in metrics else metrics["rougeL"],
            "metrics": metrics,
            "gold_logprob": gold_logprob,
            "text": p.text,
        })  # fmt: skip
    return rows


def headline_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The metric example_rows' values are in: accuracy when every example had options, else rougeL (a task
    mixing both has values of both kinds; it is named by its free-form part)."""
    return "accuracy" if rows and all("accuracy" in r["metrics"] for r in rows) else "rougeL"


class _CallableModule(types.ModuleType):
    """`from hubtool import evaluate` gives this module once `hubtool.evaluate` has been imported (Python binds
    a package's submodule over its lazy attribute): calling it calls evaluate()."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
