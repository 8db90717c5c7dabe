"""The smoke preset's world: a tiny random Llama with a word-level tokenizer, and generated tasks.

Everything is made from a fixed seed, so two machines build the same model and the same data (the
experts' cache keys then match too). Built once per experiment folder, atomically (temp + rename).

Tasks (one word per token, prompts end in "Answer:"):
    smoke-first  "first : w1 w2 w3 w4 Answer:"     -> w1            (generation, qa)
    smoke-last   "last : w1 w2 w3 w4 Answer:"      -> w4            (generation, qa)
    smoke-vowel  "vowel : w1 w2 w3 Answer:"        -> yes | no      (options, classify: w1 starts with a vowel)
    smoke-count  "count : w1 .. wn Answer:"        -> two | three | four  (options, classify)
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

WORDS = [
    "apple", "river", "stone", "eagle", "olive", "tiger", "umbra", "cloud", "iris", "maple",
    "ember", "north", "ocean", "pearl", "amber", "lemon", "ivory", "frost", "orbit", "sugar",
]  # fmt: skip
LABELS = ["yes", "no", "two", "three", "four"]
PROMPT_WORDS = ["first", "last", "vowel", "count", ":", "Answer:"]
TASKS = {"smoke-first": "qa", "smoke-last": "qa", "smoke-vowel": "classify", "smoke-count": "classify"}
SIZES = {"train": 240, "validation": 24, "test": 24}


def _example(task: str, rng: random.Random) -> dict:
    if task == "smoke-count":
        n = rng.choice([2, 3, 4])
        words = [rng.choice(WORDS) for _ in range(n)]
        return {"input": f"count : {' '.join(words)} Answer:", "output": LABELS[n], "options": LABELS[2:]}
    words = [rng.choice(WORDS) for _ in range(4 if task != "smoke-vowel" else 3)]
    if task == "smoke-vowel":
        label = "yes" if words[0][0] in "aeiou" else "no"
        return {"input": f"vowel : {' '.join(words)} Answer:", "output": label, "options": ["yes", "no"]}
    word = task.split("-", 1)[1]
    return {"input": f"{word} : {' '.join(words)} Answer:", "output": words[0] if word == "first" else words[-1]}


def _write_tasks(root: Path) -> None:
    for t, (task, category) in enumerate(TASKS.items()):
        folder = root / task
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(1000 + t)
        seen: set[str] = set()
        for split, size in SIZES.items():
            rows = []
            while len(rows) < size:
                row = _example(task, rng)
                if row["input"] not in seen:  # a prompt in one split only
                    seen.add(row["input"])
                    rows.append(row)
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "task.json").write_text(json.dumps({"category": category, "description": f"generated: {task}"}))


def _write_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for a 200 kB model is noise

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *PROMPT_WORDS, *WORDS, *LABELS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    # q_proj [64, 64], k/v_proj [32, 64]: big enough for a 5% mask to hold ~200 entries per weight.
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def prepare(root: Path) -> tuple[Path, Path]:
    """(base model folder, task folder root) under root, built on first use."""
    base, tasks = root / "base", root / "tasks"
    for path, write in ((base, _write_model), (tasks, _write_tasks)):
        if path.is_dir():
            continue
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        tmp.rename(path)
    return base, tasks


__all__ = ["TASKS", "prepare"]
