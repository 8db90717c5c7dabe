"""The paired, stratified bootstrap (hubtool/stats.py) against direct computations: the same index draws
re-made by hand with numpy, hand-computed plug-in values, exact bootstrap distributions enumerated on tiny
cases, and the properties pairing and stratification promise."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hubtool.errors import HubError
from hubtool.stats import Bootstrap, Estimate, fmt, task_seed

# Two tasks of 5 and 3 examples; per-task means: merged 60 / 50, single 80 / 60, base 20 / 30.
OUTCOMES = {
    "merged": {"a": [100, 0, 100, 100, 0], "b": [50, 25, 75]},
    "single": {"a": [100, 100, 100, 100, 0], "b": [60, 50, 70]},
    "base": {"a": [0, 0, 100, 0, 0], "b": [30, 10, 50]},
}


def _redrawn_means(outcomes, row, task, draws, seed):
    """[draws] means of one row on one task, on indices re-drawn by hand as the module docstring says."""
    values = np.asarray(outcomes[row][task], dtype=float)
    n = len(values)
    index = np.random.default_rng([seed, task_seed(task)]).integers(0, n, size=(draws, n))
    return np.array([values[i].mean() for i in index])


def _interval(drawn):
    low, high = np.percentile(drawn, [2.5, 97.5])
    return low, high


def test_statistics_equal_a_direct_computation_on_the_same_draws():
    draws, seed = 500, 7
    boot = Bootstrap(OUTCOMES, draws=draws, seed=seed)
    m = {(r, t): _redrawn_means(OUTCOMES, r, t, draws, seed) for r in OUTCOMES for t in ("a", "b")}

    mean = boot.mean("merged")
    assert mean.value == pytest.approx((60 + 50) / 2)
    direct = (m["merged", "a"] + m["merged", "b"]) / 2
    assert (mean.low, mean.high) == pytest.approx(_interval(direct), abs=1e-9)
    np.testing.assert_allclose(mean.draws, direct, atol=1e-9)

    diff = boot.diff("merged", "single")
    assert diff.value == pytest.approx(((60 - 80) + (50 - 60)) / 2)
    direct = ((m["merged", "a"] - m["single", "a"]) + (m["merged", "b"] - m["single", "b"])) / 2
    assert (diff.low, diff.high) == pytest.approx(_interval(direct), abs=1e-9)

    retention = boot.retention("merged", "single")
    assert retention.value == pytest.approx(100 * (60 + 50) / (80 + 60))
    direct = 100 * (m["merged", "a"] + m["merged", "b"]) / (m["single", "a"] + m["single", "b"])
    assert (retention.low, retention.high) == pytest.approx(_interval(direct), abs=1e-9)

    gain = boot.gain("merged", "single", "base")
    assert gain.value == pytest.approx(100 * ((60 + 50) - (20 + 30)) / ((80 + 60) - (20 + 30)))
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = 100 * (m["merged", "a"] + m["merged", "b"] - m["base", "a"] - m["base", "b"]) / (
            m["single", "a"] + m["single", "b"] - m["base", "a"] - m["base", "b"]
        )
    assert np.isfinite(direct).all()
    assert (gain.low, gain.high) == pytest.approx(_interval(direct), abs=1e-9)
    assert gain.low < gain.value < gain.high and retention.low < retention.value < retention.high


def test_single_rows_may_differ_per_task():
    # Each task's own single expert: R = (60 + 50) / (80 + 60), whichever row holds each single score.
    outcomes = {
        "merged": OUTCOMES["merged"],
        "a-expert": {"a": OUTCOMES["single"]["a"]},
        "b-expert": {"b": OUTCOMES["single"]["b"]},
    }
    per_task = Bootstrap(outcomes, draws=300, seed=1).retention("merged", {"a": "a-expert", "b": "b-expert"})
    one_row = Bootstrap(OUTCOMES, draws=300, seed=1).retention("merged", "single")
    assert (per_task.value, per_task.low, per_task.high) == pytest.approx((one_row.value, one_row.low, one_row.high))
    only_a = Bootstrap(outcomes, draws=300, seed=1).retention("merged", {"a": "a-expert", "b": "b-expert"}, ["a"])
    assert only_a.value == pytest.approx(100 * 60 / 80)


def test_equal_outcomes_collapse_the_interval():
    boot = Bootstrap({"x": {"a": [70.0] * 6, "b": [40.0] * 3}, "y": {"a": [35.0] * 6, "b": [20.0] * 3}}, draws=200)
    for est, want in ((boot.mean("x"), 55.0), (boot.diff("x", "y"), 27.5), (boot.retention("y", "x"), 50.0)):
        assert est.value == pytest.approx(want) and est.low == pytest.approx(want) and est.high == pytest.approx(want)


def test_draws_are_paired_and_stratified():
    rng = np.random.default_rng(3)
    a = {"t": list(rng.uniform(0, 100, 40)), "u": list(rng.uniform(0, 100, 25))}
    shifted = {t: [v + 10 for v in values] for t, values in a.items()}
    boot = Bootstrap({"a": a, "b": shifted}, draws=400)
    # Paired: b - a is 10 on every example, so on every draw; unpaired draws would spread it.
    diff = boot.diff("b", "a")
    assert (diff.value, diff.low, diff.high) == pytest.approx((10, 10, 10))
    assert boot.mean("a").high - boot.mean("a").low > 5
    # Stratified: a task of all 100s and one of all 0s average to 50 on every draw (each draw keeps
    # each task's own size and weight; pooling the examples would not).
    strata = Bootstrap({"r": {"hi": [100.0] * 3, "lo": [0.0] * 9}}, draws=300).mean("r")
    assert (strata.value, strata.low, strata.high) == pytest.approx((50, 50, 50))


def test_a_tasks_draws_do_not_depend_on_the_other_tasks():
    both = Bootstrap(OUTCOMES, draws=300, seed=2)
    alone = Bootstrap({r: {"a": v["a"]} for r, v in OUTCOMES.items()}, draws=300, seed=2)
    for boot in (both, alone):
        assert boot.tasks[0] == "a"
    x, y = both.diff("merged", "base", ["a"]), alone.diff("merged", "base")
    assert (x.value, x.low, x.high) == (y.value, y.low, y.high)
    other_seed = Bootstrap(OUTCOMES, draws=300, seed=3).diff("merged", "base", ["a"])
    assert not np.array_equal(other_seed.draws, x.draws)


def _exact(values_per_task):
    """The exact bootstrap distribution of the mean over tasks of per-task means: (support, probabilities),
    every combination of resamples enumerated (n_t ** n_t per task, all equally likely)."""
    per_task = []
    for values in values_per_task:
        n = len(values)
        per_task.append([sum(values[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n)])
    outcomes = [sum(ms) / len(ms) for ms in itertools.product(*per_task)]
    support, counts = np.unique(np.round(outcomes, 9), return_counts=True)
    return support, counts / counts.sum()


def test_the_bootstrap_distribution_matches_the_exact_one_on_a_small_case():
    values = {"a": [0.0, 100.0, 100.0], "b": [10.0, 40.0, 40.0, 90.0]}  # 27 x 256 equally likely resamples
    support, prob = _exact(list(values.values()))
    plug_in = (200 / 3 + 45) / 2
    # The exact distribution's mean is the plug-in estimate (the mean of a resample is unbiased).
    assert float(support @ prob) == pytest.approx(plug_in)

    draws = 20_000
    est = Bootstrap({"r": values}, draws=draws, seed=0).mean("r")
    assert est.value == pytest.approx(plug_in)
    sd = math.sqrt(float(((support - plug_in) ** 2) @ prob))
    assert abs(est.draws.mean() - plug_in) < 4 * sd / math.sqrt(draws)
    assert est.draws.std() == pytest.approx(sd, rel=0.05)
    # Whole distribution: the empirical CDF stays within the DKW band (P > 0.999) of the exact CDF.
    empirical = np.searchsorted(np.sort(np.round(est.draws, 9)), support, side="right") / draws
    assert np.abs(empirical - np.cumsum(prob)).max() < math.sqrt(math.log(2 / 0.001) / (2 * draws))
    # And so its percentile interval sits at the exact distribution's 2.5% and 97.5% quantiles.
    exact_low = support[np.searchsorted(np.cumsum(prob), 0.025)]
    exact_high = support[np.searchsorted(np.cumsum(prob), 0.975)]
    step = np.diff(support).max()
    assert abs(est.low - exact_low) <= step and abs(est.high - exact_high) <= step


def test_rows_are_paired_by_example_id():
    # A mapping pairs by id, whatever its order: the same outcomes as lists give the same estimates.
    as_lists = Bootstrap({"x": {"t": [1.0, 2.0, 9.0]}, "y": {"t": [3.0, 3.0, 4.0]}}, draws=200)
    as_maps = Bootstrap({"x": {"t": {2: 9.0, 0: 1.0, 1: 2.0}}, "y": {"t": [3.0, 3.0, 4.0]}}, draws=200)
    a, b = as_lists.diff("x", "y"), as_maps.diff("x", "y")
    assert (a.value, a.low, a.high) == (b.value, b.low, b.high)


def test_bad_input_is_one_hub_error_naming_what_is_wrong():
    with pytest.raises(HubError, match="task 't': rows 'x' and 'y' were scored on different examples"):
        Bootstrap({"x": {"t": [1.0, 2.0]}, "y": {"t": [1.0, 2.0, 3.0]}})
    with pytest.raises(HubError, match="task 't': rows 'x' and 'y'"):
        Bootstrap({"x": {"t": {0: 1.0, 1: 2.0}}, "y": {"t": {0: 1.0, 5: 2.0}}})
    with pytest.raises(HubError, match="task 't', row 'x': expected one finite number"):
        Bootstrap({"x": {"t": [1.0, float("nan")]}})
    with pytest.raises(HubError, match="task 't', row 'x': expected at least one"):
        Bootstrap({"x": {"t": []}})
    with pytest.raises(HubError, match="--draws 0"):
        Bootstrap({"x": {"t": [1.0]}}, draws=0)
    boot = Bootstrap(OUTCOMES, draws=50)
    with pytest.raises(HubError, match="row 'nope'"):
        boot.mean("nope")
    with pytest.raises(HubError, match="task 'c': row 'merged' has no outcomes"):
        boot.mean("merged", ["c"])
    with pytest.raises(HubError, match="task 'b': no single-task row"):
        boot.retention("merged", {"a": "single"}, ["a", "b"])


def test_formatting_and_undefined_ratios():
    assert fmt(Estimate(58.24, 55.14, 61.0)) == "58.2 [55.1, 61.0]" == str(Estimate(58.24, 55.14, 61.0))
    assert fmt(Estimate(58.24, 55.14, 61.0), digits=2) == "58.24 [55.14, 61.00]"
    # Single = base on every example: the gain has no denominator, so it is undefined, not an error.
    boot = Bootstrap({"m": {"t": [0.0, 100.0]}, "s": {"t": [100.0, 0.0]}, "base": {"t": [100.0, 0.0]}}, draws=50)
    gain = boot.gain("m", "s", "base")
    assert math.isnan(gain.value) and fmt(gain) == "-" and gain.as_dict() == {"value": None, "low": None, "high": None}
    # Defined on the data, but some draws have single = base: a value without an interval.
    boot = Bootstrap({"m": {"t": [0.0, 100.0]}, "s": {"t": [100.0, 100.0]}, "base": {"t": [0.0, 100.0]}}, draws=50)
    gain = boot.gain("m", "s", "base")
    assert gain.value == pytest.approx(0.0) and fmt(gain) == "0.0 [-]"


def test_draws_with_a_zero_denominator_are_extremes_not_failures():
    # Single [100, 0, 0, 0]: a third of the draws resample no 100, so R = m / 0 = inf there: the upper end
    # is unbounded, the lower end still a number.
    boot = Bootstrap({"m": {"t": [100.0] * 4}, "s": {"t": [100.0, 0.0, 0.0, 0.0]}}, draws=400)
    r = boot.retention("m", "s")
    assert r.value == pytest.approx(400.0) and r.high == math.inf and 100 <= r.low < 400
    assert fmt(r) == f"400.0 [{r.low:.1f}, inf]" and r.as_dict()["high"] is None
    # Single [100, 100, 100, 0]: a few draws (p = 1/256) are infinite, beyond the 97.5th percentile, so both
    # ends are what numpy gives with those draws standing in as very large numbers.
    boot = Bootstrap({"m": {"t": [100.0, 0.0, 100.0, 100.0]}, "s": {"t": [100.0, 100.0, 100.0, 0.0]}}, draws=4000)
    r = boot.retention("m", "s")
    assert np.isinf(r.draws).any()
    stand_in = np.where(np.isinf(r.draws), 1e300, r.draws)
    assert (r.low, r.high) == pytest.approx(tuple(np.percentile(stand_in, [2.5, 97.5])))
    assert math.isfinite(r.high)


def test_claim_3_is_judged_by_the_interval_not_the_point():
    """Held-out gain over the base, weak = at most 2 points: an interval straddling the line decides nothing
    (the n8 report once said "does not hold" for 3.9 [-0.1, 8.2])."""
    from hubtool.experiment.n8_report import weak_verdict
    from hubtool.stats import Estimate

    assert weak_verdict([Estimate(3.9, -0.1, 8.2)]).startswith("**not resolved**")
    assert weak_verdict([Estimate(1.0, -0.5, 1.9), Estimate(0.2, -1.0, 2.0)]) == "**holds**"
    assert weak_verdict([Estimate(1.0, -0.5, 1.9), Estimate(5.0, 2.5, 8.0)]) == "**does not hold**"
    assert weak_verdict([Estimate(1.0, -0.5, 1.9), Estimate(3.0, 1.0, 5.0)]).startswith("**not resolved**")
