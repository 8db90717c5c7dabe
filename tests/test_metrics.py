"""Metrics on strings whose scores are worked out by hand."""

from __future__ import annotations

import pytest

from hubtool.data.metrics import accuracy, exact_match, normalize_answer, rouge_l


def f_measure(lcs: int, pred_len: int, ref_len: int) -> float:
    p, r = lcs / pred_len, lcs / ref_len
    return 2 * p * r / (p + r)


def test_rouge_l_is_the_lcs_f_measure():
    # pred: the cat sat on the mat / ref: the cat is on the mat -> LCS "the cat on the mat" = 5 of 6 and 6.
    assert rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # LCS of (a b c d) and (a c e) is "a c": P = 2/4, R = 2/3, F = 4/7.
    assert rouge_l("a b c d", ["a c e"]) == pytest.approx(f_measure(2, 4, 3)) == pytest.approx(4 / 7)
    # Order matters for a subsequence: (c b a) against (a b c) share only one token in order.
    assert rouge_l("c b a", ["a b c"]) == pytest.approx(1 / 3)
    assert rouge_l("x y", ["a b"]) == 0.0


def test_rouge_l_stems_ignores_case_and_punctuation_and_takes_the_best_reference():
    assert rouge_l("Running dogs!", ["run dog"]) == pytest.approx(1.0)  # Porter: running->run, dogs->dog
    assert rouge_l("Paris.", ["London", "paris"]) == pytest.approx(1.0)
    # Best of: "the red car" vs "a red car" (LCS 2 of 3 and 3) and vs "car" (LCS 1 of 3 and 1).
    assert rouge_l("the red car", ["a red car", "car"]) == pytest.approx(max(f_measure(2, 3, 3), f_measure(1, 3, 1)))


def test_exact_match_normalises_then_takes_any_reference():
    assert normalize_answer("  The  quick, brown fox. ") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert exact_match("six geese a-laying", ["6 geese a-laying", "six geese alaying"]) == 1.0
    assert exact_match("theatre", ["the atre"]) == 0.0  # articles are removed as words only


def test_accuracy_counts_equal_pairs():
    assert accuracy(["yes", "no", "no"], ["yes", "yes", "no"]) == pytest.approx(2 / 3)
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy(["yes"], ["yes", "no"])
