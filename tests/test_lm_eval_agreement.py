"""lm-evaluation-harness as an outside oracle: hub's evaluator and lm-eval score the same examples alike.

A tiny random Llama with a word-level tokenizer, a few generated multiple-choice and generation examples,
with and without a chat template. hub scores them with hubtool.evaluate.evaluate; lm-eval with the task
benchmarks/lm_eval_agreement.py renders (the same context strings in a local JSONL, HFLM on the saved
folder). Per example the chosen option, the options' log-probs and the generated text must match, and so must
the scores. Skipped without lm-eval (`pip install -e '.[oracle]'`).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lm_eval_agreement as agreement
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.data.tasks import Example, TaskData
from hubtool.evaluate import evaluate

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "sky", "grass", "is", "what", "colour", "animal",
         "Question:", "Options:", "Answer:", "A.", "B.", "C.", "<|user|>", "<|assistant|>"]
NOUNS = ["red", "green", "blue", "cat", "dog", "bird", "sky", "grass"]
# Ends in a space, as SmolLM2's ends in a newline: lm-eval moves it into the continuation.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def save_char_tokenizer(path: Path):
    """One token per character, newline included, so whitespace is a token (as in SmolLM2's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE_NEWLINE
    tokenizer.save_pretrained(path)
    return tokenizer


# Ends in a newline, as SmolLM2's does; with a character tokenizer that newline is a token of the prompt.
CHAT_TEMPLATE_NEWLINE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>\n{% endif %}")


@pytest.fixture(scope="module", params=["plain", "chat", "chat-char"])
def folder(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "chat-char":
        tokenizer = save_char_tokenizer(path)
    else:
        tokenizer = save_word_tokenizer(path, WORDS)
        if request.param == "chat":
            tokenizer.chat_template = CHAT_TEMPLATE
            tokenizer.save_pretrained(path)
    make_tiny_llama(path, vocab=len(tokenizer))  # every id the model can emit decodes to a token
    return path


def choice_examples(n: int = 6) -> list[Example]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        options = rng.sample(NOUNS, 3)
        # Options of one, two and three words, so acc_norm's length division matters.
        options = [" ".join(options[: k + 1]) for k in range(3)]
        rng.shuffle(options)
        text = "Question: what " + rng.choice(["colour", "animal"]) + " is " + rng.choice(NOUNS) + " Options: " + \
            " ".join(f"{letter} {o}" for letter, o in zip(["A.", "B.", "C."], options)) + " Answer:"
        out.append(Example(text, rng.choice(options), options=options))
    return out


def generation_examples(n: int = 5) -> list[Example]:
    rng = random.Random(1)
    return [Example("Question: what is " + " ".join(rng.sample(NOUNS, 3)) + " Answer:", "sky") for _ in range(n)]


def hub_side(folder: Path, examples: list[Example], name: str):
    """hub's evaluator on the examples: (model, tokenizer, scores, per-example predictions)."""
    from hubtool.models import load_base

    model, tokenizer = load_base(str(folder))
    predictions: list = []
    scores = evaluate(model, tokenizer, TaskData(name, [], [], examples), max_new_tokens=6, batch_size=4,
                      predictions=predictions)
    return model, tokenizer, scores, predictions


def lm_eval_side(folder: Path, model, tokenizer, examples: list[Example], name: str):
    """lm-eval on the task the benchmark renders: (metrics in percent, samples, rendered task, HFLM)."""
    from hubtool.data.prompts import has_chat_template

    rendered = agreement.render_task(name, examples, model, tokenizer, folder / "tasks", max_new_tokens=6)
    lm = agreement.make_lm(str(folder), batch_size=4, chat=has_chat_template(tokenizer))
    metrics, samples = agreement.run_lm_eval(lm, rendered)
    assert len(samples) == len(examples)
    return metrics, samples, rendered, lm


def test_multiple_choice_same_choices_and_scores(folder):
    examples = choice_examples()
    model, tokenizer, scores, predictions = hub_side(folder, examples, "mc")
    metrics, samples, rendered, lm = lm_eval_side(folder, model, tokenizer, examples, "mc")
    shift = agreement.shared_prefix_logprobs(lm, rendered.contexts)
    for p, s, e, c in zip(predictions, samples, examples, shift):
        lls = agreement.sample_lls(s)
        # lm-eval's continuation starts with the context's trailing whitespace when that is a token: the
        # same log-prob c added to every option; hub's option scores are lm-eval's less c.
        assert [ll - c for ll in lls] == pytest.approx(p.option_logprobs, abs=1e-4)
        assert e.options[max(range(len(lls)), key=lls.__getitem__)] == p.text
    assert metrics["acc"] == pytest.approx(scores["accuracy"])
    if folder.name.startswith("chat-char"):
        assert all(c < 0 for c in shift)
        assert agreement.mc_diagnostics(lm, rendered, samples)["acc_norm_without_shift"] == \
            pytest.approx(scores["accuracy_norm"])
    else:  # a word-level tokenizer drops the whitespace: no token moves, nothing to correct
        assert shift == [0.0] * len(examples)
        assert metrics["acc_norm"] == pytest.approx(scores["accuracy_norm"])
        assert metrics["acc_bytes"] == pytest.approx(scores["accuracy_norm"])


def test_generation_same_text_and_exact_match(folder):
    from hubtool.data.metrics import normalize_answer
    from hubtool.evaluate import metrics_of

    examples = generation_examples()
    model, tokenizer, _, predictions = hub_side(folder, examples, "gen")
    assert any(normalize_answer(p.text) for p in predictions), "the tiny model generated nothing to compare"
    # Gold answers that equal the generation only after hub's normalisation (case, punctuation, articles,
    # spacing) on every other example, so exact match is neither 0 nor 100 and the normalisation is exercised.
    for i, (e, p) in enumerate(zip(examples, predictions)):
        e.answers = [f"The  {p.text.upper()}." if i % 2 == 0 else "sky", "nothing here"]
    scores = metrics_of(predictions)  # hub's scoring of the same predictions against the new answers
    metrics, samples, rendered, _ = lm_eval_side(folder, model, tokenizer, examples, "gen")
    assert [agreement.sample_text(s).strip() for s in samples] == [p.text for p in predictions]
    assert 0 < scores["exact_match"] < 100
    assert metrics["exact_match"] == pytest.approx(scores["exact_match"])
    assert agreement.gen_diagnostics(rendered, samples)["rougeL"] == pytest.approx(scores["rougeL"])


def test_write_section_replaces_or_appends(tmp_path):
    page = tmp_path / "results.md"
    agreement.write_section(page, "first")
    agreement.write_section(page, "second")
    text = page.read_text()
    assert text.count("<!-- section: lm-eval agreement -->") == 1 and "second" in text and "first" not in text
    page.write_text("# Results\n\nbefore\n\n<!-- section: lm-eval agreement -->\nold\n"
                    "<!-- /section: lm-eval agreement -->\n\nafter\n")
    agreement.write_section(page, "new table")
    assert page.read_text() == ("# Results\n\nbefore\n\n<!-- section: lm-eval agreement -->\nnew table\n"
                                "<!-- /section: lm-eval agreement -->\n\nafter\n")
