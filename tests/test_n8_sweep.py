"""The λ sweep's rule for extending its grid past an end (hubtool.experiment.n8.next_lam): checked on
hand-made score tables, where the right answer can be read off."""

from __future__ import annotations

import pytest

from hubtool.experiment.n8 import MAX_EXTEND, best_lam, next_lam

FACTORS = (0.5, 1.0, 1.5, 2.0)


def table(default: float, values: list[float], factors: tuple[float, ...] = FACTORS) -> dict[float, float]:
    return {default * f: v for f, v in zip(factors, values)}


def test_a_best_inside_the_grid_ends_the_sweep() -> None:
    assert next_lam(table(1.0, [31.3, 33.2, 34.8, 32.8]), 1.0, FACTORS) is None  # the n8 run's sparse sweep


def test_a_best_at_the_top_adds_one_grid_step_past_it() -> None:
    scores = table(1.0, [30.0, 33.9, 34.6, 35.6])  # the n8 run's Iso-C sweep at code bb97439
    assert next_lam(scores, 1.0, FACTORS) == pytest.approx(2.5)
    scores[2.5] = 35.9
    assert next_lam(scores, 1.0, FACTORS) == pytest.approx(3.0)
    scores[3.0] = 35.0  # falls: 2.5 is inside now
    assert next_lam(scores, 1.0, FACTORS) is None and best_lam(scores, 1.0) == 2.5


def test_the_step_follows_the_default() -> None:
    # LoRA's task arithmetic: default 0.4, grid 0.2 .. 0.8, so the step is 0.2.
    assert next_lam(table(0.4, [1, 2, 3, 4]), 0.4, FACTORS) == pytest.approx(1.0)


def test_a_best_at_the_bottom_halves_it() -> None:
    scores = table(1.0, [36.0, 33.0, 32.0, 31.0])
    assert next_lam(scores, 1.0, FACTORS) == pytest.approx(0.25)
    scores[0.25] = 35.0
    assert next_lam(scores, 1.0, FACTORS) is None and best_lam(scores, 1.0) == 0.5


def test_the_extension_stops_after_max_extend_points() -> None:
    scores = table(1.0, [1, 2, 3, 4])
    added = 0
    while (lam := next_lam(scores, 1.0, FACTORS)) is not None:
        scores[lam] = 10 + lam  # always rising
        added += 1
    assert added == MAX_EXTEND and max(scores) == pytest.approx(2.0 + 0.5 * MAX_EXTEND)


def test_ties_go_to_the_lambda_closest_to_the_default() -> None:
    assert best_lam({0.5: 1.0, 1.0: 1.0, 2.0: 1.0}, 1.0) == 1.0
    assert best_lam({0.5: 1.0, 2.0: 1.0}, 1.0) in (0.5, 2.0)  # equally far in log scale: either
    # a tie at the top end with an inside point: the inside one is closer, so no extension
    assert next_lam(table(1.0, [0.0, 5.0, 1.0, 5.0]), 1.0, FACTORS) is None


def test_a_single_point_grid_is_never_extended() -> None:
    assert next_lam({1.0: 3.0}, 1.0, (1.0,)) is None
