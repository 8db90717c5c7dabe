"""Scores of one prediction against its gold answers, each in [0, 1]; the best over the references.

Rouge-L is the paper's metric: the F-measure of the longest common subsequence of tokens, from the
maintained `rouge-score` package with Porter stemming (its tokenizer lower-cases and keeps only
[a-z0-9] runs). Exact match uses SQuAD's normalisation: lower case, no punctuation, no articles,
single spaces.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

# A task's score, in this order of preference: accuracy for tasks with options, else Rouge-L (the paper's
# metric), else exact match. Declared once: reports, retention, `hub list` and model cards all rank by it.
HEADLINE = ("accuracy", "rougeL", "exact_match")


def headline(per_task: dict[str, Any]) -> str | None:
    """The headline metric among one task's {metric: value}, or None when it has none of them."""
    return next((m for m in HEADLINE if m in per_task), None)


def format_metric(value: float | None, *, gain: bool = False) -> str:
    """A metric value as `hub list`, `hub show` and every page show it: 4 significant digits ("41.25",
    "0.1234"), a sign in front of a gain ("+2.5", "-0.75"); "-" for None."""
    if value is None:
        return "-"
    return f"{value:+.4g}" if gain else f"{value:.4g}"


def metric_summary(metrics: dict[str, dict[str, float]]) -> str:
    """{task: {metric: value}} -> "accuracy 72 · rougeL 41.25": the primary task's first two metrics, headline
    ones first (losses only when nothing else was measured), as `hub list` and the catalog page show them."""
    for per_task in metrics.values():
        ranked = sorted(per_task, key=lambda m: (HEADLINE.index(m) if m in HEADLINE else len(HEADLINE), m))
        return " · ".join(f"{m} {format_metric(per_task[m])}" for m in ranked[:2])
    return "-"


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    # Imported on first use: rouge_score pulls in nltk, which `hub --help` should not pay for.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    scorer = _rouge_scorer()
    return max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


def accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Share of predictions equal to their target (the chosen option against the gold option)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        return 0.0
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)
