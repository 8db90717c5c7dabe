"""Option scoring with a shared prompt prefix (hubtool.evaluate.option_logprobs) against the full (prompt,
option) sequences it replaced (_option_logprobs_full), on a tiny random fp32 Llama with a character-level
tokenizer: the same log-probs within 1e-5, the same choices, the prompt run once per example, and the
full-sequence path kept for an example whose options cut its prompt differently."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from test_evaluate import char_tokenizer
from tiny import make_tiny_llama

from hubtool.data.prompts import prompt_answer_ids
from hubtool.data.tasks import Example, TaskData
from hubtool.errors import HubError
from hubtool.evaluate import _option_logprobs_full, evaluate, option_logprobs

WINDOW = 128  # the tiny Llama's max_position_embeddings


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab=128, hidden=32, heads=2, kv_heads=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_examples(seed: int, n: int) -> list[Example]:
    """Prompts of 1-70 characters, 1-6 distinct options of 1-12 characters each (a character is a token)."""
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return "".join(rng.choice("abcdefgh ?") for _ in range(rng.randint(low, high))).strip() or "z"

    examples = []
    for _ in range(n):
        options = list(dict.fromkeys(text(1, 12) for _ in range(rng.randint(1, 6))))
        examples.append(Example(text(1, 70) + "\nAnswer:", rng.choice(options), options))
    return examples


@contextmanager
def positions_run(model) -> Iterator[list[int]]:
    """A list that records, for every forward inside the block, how many positions (batch x length) the
    model embedded."""
    seen: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel()))
    try:
        yield seen
    finally:
        hook.remove()


def argmax(row: list[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_shared_prefix_equals_full_sequences(model, chat, batch_size):
    tok = char_tokenizer(chat=chat)
    examples = random_examples(seed=batch_size, n=24)
    # The set covers what the shared path treats apart: options of one token (the chat template puts no
    # space before an option, so "a" is one token) and of many, and examples of one option.
    lengths = {len(prompt_answer_ids(tok, e.input, o)[1]) for e in examples for o in e.options}
    assert max(lengths) >= 8 and (min(lengths) == 1 or not chat)
    assert any(len(e.options) == 1 for e in examples) and any(len(e.options) >= 5 for e in examples)
    with torch.inference_mode():
        shared = option_logprobs(model, tok, examples, batch_size=batch_size)
        full = _option_logprobs_full(model, tok, examples, batch_size=batch_size)
    assert [len(r) for r in shared] == [len(e.options) for e in examples]
    for s, f in zip(shared, full):
        assert s == pytest.approx(f, abs=1e-5, rel=0)
        assert argmax(s) == argmax(f)
    # evaluate's predictions are the options the full path would choose
    preds: list = []
    evaluate(model, tok, TaskData("t", [], [], examples), batch_size=batch_size, predictions=preds)
    assert [p.text for p in preds] == [e.options[argmax(f)] for e, f in zip(examples, full)]


def test_the_prompt_runs_once_per_example(model):
    tok = char_tokenizer(chat=True)
    prompt, options = "which colour is the sky?\nAnswer:", ["blue", "red", "a grey one"]
    p = len(prompt_answer_ids(tok, prompt, options[0])[0])
    example = Example(prompt, "blue", options)
    with torch.inference_mode(), positions_run(model) as shared:
        option_logprobs(model, tok, [example], batch_size=1)
    with torch.inference_mode(), positions_run(model) as full:
        _option_logprobs_full(model, tok, [example], batch_size=1)
    # Shared: the prompt once, then 3 options x their longest tail (10 tokens, less the first, which the
    # prompt's last logit scores). Full: each option a sequence of its own with the whole prompt, longest first.
    assert shared == [p, 3 * 9]
    assert full == [p + 10, p + 4, p + 3]

    # Options of one token each: the prompt's last logit scores them all, one forward in all.
    with torch.inference_mode(), positions_run(model) as seen:
        option_logprobs(model, tok, [Example(prompt, "a", ["a", "b", "c", "d"])], batch_size=1)
    assert seen == [p]


def test_window_pressure_falls_back_to_full_sequences(model):
    tok = char_tokenizer(chat=True)
    long_prompt = "abcdefgh " * 20 + "\nAnswer:"  # 188 tokens: past the 128-position window
    # Its options leave the prompt 127 and 97 tokens: different cuts, so no prompt to share.
    pressed = Example(long_prompt, "x", ["x", "y" * 31])
    easy = random_examples(seed=7, n=5)
    examples = [easy[0], pressed, *easy[1:]]
    with torch.inference_mode():
        shared = option_logprobs(model, tok, examples, batch_size=4)
        full = _option_logprobs_full(model, tok, examples, batch_size=4)
    with torch.inference_mode(), positions_run(model) as seen:
        option_logprobs(model, tok, [pressed], batch_size=4)
    for s, f in zip(shared, full):
        assert s == pytest.approx(f, abs=1e-5, rel=0)
    # The pressed example alone: its two full sequences, each filling the window, in one forward.
    assert seen == [2 * WINDOW]


def test_max_prompt_tokens_cuts_the_shared_prompt_as_before(model):
    tok = char_tokenizer()
    examples = random_examples(seed=3, n=10)
    with torch.inference_mode():
        shared = option_logprobs(model, tok, examples, batch_size=4, max_prompt_tokens=12)
        full = _option_logprobs_full(model, tok, examples, batch_size=4, max_prompt_tokens=12)
        uncut = option_logprobs(model, tok, examples, batch_size=4)
    for s, f in zip(shared, full):
        assert s == pytest.approx(f, abs=1e-5, rel=0)
    # the cut changed what was scored
    assert any(abs(a - b) > 1e-3 for s, u in zip(shared, uncut) for a, b in zip(s, u))


def test_bad_input_errors_are_unchanged(model):
    tok = char_tokenizer(chat=True)
    too_long = Example("Q?", "a", ["a", "b" * WINDOW])
    with pytest.raises(HubError, match=rf"example 1: option 1 is {WINDOW} tokens, as long as the model's window"):
        option_logprobs(model, tok, [Example("Q?", "a", ["a"]), too_long])
    with pytest.raises(HubError, match="prompt of example 0 encodes to no tokens"):
        option_logprobs(model, char_tokenizer(), [Example("", "a", ["a", "b"])])
