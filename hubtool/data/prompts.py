"""Prompts and token ids: the same text -> ids path for training, generation and option scoring.

A prompt goes through the tokenizer's chat template when it has one (a single user message, the
assistant header appended); otherwise it is plain text and the answer follows it after one space
(task prompts end with "Answer:" and answers have no leading space).

The answer's ids are the tail of encode(prompt + answer) after encode(prompt), so the boundary is
tokenised as in running text; if a tokenizer merges across the boundary the answer is encoded alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from hubtool.data.tasks import Example

IGNORE_INDEX = -100  # labels with this value add nothing to the cross-entropy loss


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, text: str) -> str:
    if not has_chat_template(tokenizer):
        return text
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_text(tokenizer: Any, prompt: str, answer: str) -> str:
    """The text that follows the formatted prompt: the answer, after a space for plain-text prompts."""
    if has_chat_template(tokenizer) or not prompt or prompt[-1].isspace():
        return answer
    return " " + answer


def _encode(tokenizer: Any, text: str, chat: bool) -> list[int]:
    # A chat template writes its own BOS/special tokens; plain text gets the tokenizer's (e.g. Llama's BOS).
    return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of the formatted prompt (what generation starts from)."""
    return _encode(tokenizer, format_prompt(tokenizer, text), has_chat_template(tokenizer))


def prompt_answer_ids(tokenizer: Any, text: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) with prompt ids + answer ids == the ids of prompt followed by answer."""
    chat = has_chat_template(tokenizer)
    prompt = format_prompt(tokenizer, text)
    follow = answer_text(tokenizer, prompt, answer)
    p_ids = _encode(tokenizer, prompt, chat)
    whole = _encode(tokenizer, prompt + follow, chat)
    if whole[: len(p_ids)] == p_ids and len(whole) > len(p_ids):
        return p_ids, whole[len(p_ids):]
    return p_ids, list(tokenizer(follow, add_special_tokens=False)["input_ids"])


def build_training_example(tokenizer: Any, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + answer + EOS; labels are IGNORE_INDEX on the prompt tokens, so the
    loss is taken on the answer tokens only.

    Too long: the answer keeps at least half the window (cut at its end), and the prompt is cut from the
    left, keeping its end where the question and the answer cue sit.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    p_ids, a_ids = prompt_answer_ids(tokenizer, example.input, example.output)
    if tokenizer.eos_token_id is not None:
        a_ids = a_ids + [tokenizer.eos_token_id]
    a_ids = a_ids[: max_length - min(len(p_ids), max_length // 2)]
    p_ids = p_ids[len(p_ids) - (max_length - len(a_ids)):] if len(p_ids) + len(a_ids) > max_length else p_ids
    return p_ids + a_ids, [IGNORE_INDEX] * len(p_ids) + a_ids


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, labels) pairs: input_ids [B, T] (pad_id), labels [B, T] (IGNORE_INDEX),
    attention_mask [B, T] (1 on real tokens), T = the longest sequence of the batch."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
