"""Prompts, training examples and evaluation on a tiny random Llama with a character-level tokenizer."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_llama
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hubtool.data.prompts import (
    IGNORE_INDEX,
    build_training_example,
    collate,
    format_prompt,
    prompt_answer_ids,
    prompt_ids,
)
from hubtool.data.tasks import Example, TaskData
from hubtool.errors import HubError
from hubtool.evaluate import evaluate, generate, option_logprobs

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character; ids 0-3 are <pad> <s> </s> <unk> (the tiny Llama's ids)."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.FixedLength(length=1)
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return make_tiny_llama(vocab=128, hidden=32, heads=2, kv_heads=1)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------ prompts


def test_format_prompt_uses_the_chat_template_only_when_there_is_one(tok):
    assert format_prompt(tok, "Hi?\nAnswer:") == "Hi?\nAnswer:"
    assert format_prompt(char_tokenizer(chat=True), "Hi?") == "<|user|>Hi?\n<|assistant|>"


def test_training_example_masks_the_prompt_and_ends_with_eos(tok):
    ids, labels = build_training_example(tok, Example("Q: hi\nAnswer:", "yes"), max_length=64)
    prompt = ids_of(tok, "Q: hi\nAnswer:")
    assert ids == prompt + ids_of(tok, " yes") + [tok.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(prompt) + ids_of(tok, " yes") + [tok.eos_token_id]

    chat = char_tokenizer(chat=True)
    ids, labels = build_training_example(chat, Example("hi", "yes"), max_length=64)
    prompt = ids_of(chat, "<|user|>hi\n<|assistant|>")
    assert ids == prompt + ids_of(chat, "yes") + [chat.eos_token_id]  # no space after a chat template
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt) and labels[len(prompt):] == ids[len(prompt):]


def test_training_example_cuts_the_prompt_from_the_left(tok):
    ids, labels = build_training_example(tok, Example("x" * 50 + "END:", "ab"), max_length=12)
    assert len(ids) == len(labels) == 12
    assert tok.decode(ids) == "xxxxEND: ab</s>"  # the prompt's end survives, the answer is whole
    assert labels.count(IGNORE_INDEX) == 8
    # A long answer keeps half the window; the prompt keeps the rest.
    ids, labels = build_training_example(tok, Example("x" * 50 + "END:", "y" * 50), max_length=12)
    assert tok.decode(ids) == "xxEND: yyyyy" and labels.count(IGNORE_INDEX) == 6


def test_collate_right_pads(tok):
    batch = [([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8])]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# --------------------------------------------------------------------------------- evaluation


def manual_option_logprob(model, tokenizer, prompt: str, option: str) -> float:
    """log p(option | prompt) from one unpadded forward of prompt + " " + option."""
    p, o = prompt_ids(tokenizer, prompt), ids_of(tokenizer, " " + option)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([p + o])).logits[0].log_softmax(-1)  # [T, V]
    return sum(logp[len(p) + i - 1, t].item() for i, t in enumerate(o))


def test_option_scores_equal_a_manual_forward_and_pick_the_best(model, tok):
    examples = [Example("Is it?\nAnswer:", "no", ["no", "yes", "maybe so"]),
                Example("A much longer question, is it?\nAnswer:", "yes", ["no", "yes", "maybe so"]),
                Example("Colour:", "red", ["red", "green", "a light blue"])]
    # batch_size 4 mixes prompts and options of different lengths in one left-padded forward.
    scores = option_logprobs(model, tok, examples, batch_size=4)
    for example, row in zip(examples, scores):
        manual = [manual_option_logprob(model, tok, example.input, o) for o in example.options]
        assert row == pytest.approx(manual, abs=1e-4)

    preds: list = []
    metrics = evaluate(model, tok, TaskData("t", [], [], examples), batch_size=4, predictions=preds)
    chosen = [e.options[max(range(3), key=row.__getitem__)] for e, row in zip(examples, scores)]
    assert [p.text for p in preds] == chosen
    assert metrics["accuracy"] == pytest.approx(100 * sum(c == e.output for c, e in zip(chosen, examples)) / 3)
    # accuracy_norm picks by log-prob per character of the option text (a char tokenizer: one token each)
    normed = [e.options[max(range(3), key=lambda j: row[j] / len(e.options[j]))] for e, row in zip(examples, scores)]
    assert metrics["accuracy_norm"] == pytest.approx(100 * sum(c == e.output for c, e in zip(normed, examples)) / 3)


def test_batched_generation_matches_one_at_a_time(model, tok):
    prompts = ["Q: a?\nAnswer:", "Question: what is longer?\nAnswer:", "Hi", "Tell me.\nAnswer:"]
    batched = generate(model, tok, prompts, max_new_tokens=8, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(len(text) <= 8 for text in batched)


def test_generation_stops_at_eos_and_keeps_the_first_line(model, tok):
    # Force the tokens "ok</s>zz" (then "ok\nmore</s>") by adding a large logit at each decoding step.
    def forcing(text_ids: list[int]):
        step = {"n": 0}

        def hook(module, inputs, logits):
            forced = text_ids[min(step["n"], len(text_ids) - 1)]
            step["n"] += 1
            logits[..., forced] += 1e4
            return logits

        return model.lm_head.register_forward_hook(hook)

    handle = forcing(ids_of(tok, "ok") + [tok.eos_token_id] + ids_of(tok, "zz"))
    try:
        assert generate(model, tok, ["Q?", "Longer Q?"], max_new_tokens=6, batch_size=2) == ["ok", "ok"]
    finally:
        handle.remove()
    handle = forcing(ids_of(tok, "ok\nmore") + [tok.eos_token_id])
    try:
        assert generate(model, tok, ["Q?"], max_new_tokens=10) == ["ok"]
    finally:
        handle.remove()


def test_evaluate_returns_metrics_in_range(model, tok):
    gen = [Example(f"Say {i}:\nAnswer:", f"w{i}", answers=[f"w{i}", "x"]) for i in range(6)]
    cls = [Example(f"Q{i} {'z' * i}?\nAnswer:", "yes" if i % 2 else "no", ["no", "yes"]) for i in range(6)]
    task = TaskData("mixed", train=[], validation=gen[:2], test=gen + cls)
    model.train()
    metrics = evaluate(model, tok, task, limit=10, max_new_tokens=4, batch_size=4)
    assert model.training  # the mode is restored
    model.eval()
    assert metrics["n"] == 10
    for key in ("rougeL", "exact_match", "accuracy"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["examples_per_s"] > 0 and metrics["seconds"] > 0
    with pytest.raises(Exception, match="no examples in split 'train'"):
        evaluate(model, tok, task, split="train")


def test_accuracy_norm_divides_by_option_length():
    from hubtool.evaluate import Prediction, metrics_of

    # Summed log-prob prefers the short option (-3 > -10); per byte the long one wins (-1 > -3).
    example = Example("Pick:", "bbbbbbbbbb", ["a", "bbbbbbbbbb"])
    metrics = metrics_of([Prediction(example, "a", [-3.0, -10.0])])
    assert metrics["accuracy"] == 0 and metrics["accuracy_norm"] == 100


def test_max_prompt_tokens_scores_the_end_of_each_prompt(model, tok):
    """Cut prompts are what training sees: option scores equal a manual forward on the prompt's last N
    ids, and a window as long as the prompt changes nothing."""
    examples = [Example("A much longer question, is it?\nAnswer:", "yes", ["no", "yes"])]
    n = 6
    cut = option_logprobs(model, tok, examples, max_prompt_tokens=n)[0]
    for score, option in zip(cut, examples[0].options):
        p_ids, o = prompt_answer_ids(tok, examples[0].input, option)
        p_ids = p_ids[-n:]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([p_ids + o])).logits[0].log_softmax(-1)
        assert score == pytest.approx(sum(logp[len(p_ids) + i - 1, t].item() for i, t in enumerate(o)), abs=1e-4)
    whole = option_logprobs(model, tok, examples)[0]
    assert option_logprobs(model, tok, examples, max_prompt_tokens=10_000)[0] == pytest.approx(whole)
    assert cut != pytest.approx(whole)
    long = ["Question: what is longer than this?\nAnswer:"]
    assert generate(model, tok, long, max_new_tokens=4, max_prompt_tokens=10_000) == generate(model, tok, long, max_new_tokens=4)


def test_library_functions_stay_callable_after_their_module_is_imported():
    """`from hubtool import train, evaluate` is the README's library API; once the submodules are imported
    Python binds them over the lazy attributes, and calling them must still call the functions."""
    import importlib

    import hubtool

    importlib.import_module("hubtool.train")
    importlib.import_module("hubtool.evaluate")
    from hubtool import evaluate as evaluate_
    from hubtool import train

    with pytest.raises(HubError, match="--name '../x'"):
        train("t", name="../x")
    with pytest.raises(HubError, match="no examples in split 'test'"):
        evaluate_(None, None, TaskData("t", [], [], []))
    assert hubtool.train is train and callable(hubtool.evaluate)
