"""Confidence intervals for scores over several tasks: a paired, stratified percentile bootstrap.

    boot = Bootstrap({"merged": {"boolq": [100, 0, 100], "xsum": [31.2, 18.0, 25.5]},
                      "single": {...}, "base": {...}}, draws=2000, seed=0)
    boot.mean("merged")                              # Estimate(value, low, high): mean over tasks
    boot.diff("merged", "base")                      # merged - base
    boot.retention("merged", {"boolq": "boolq-sparse", "xsum": "xsum-sparse"})   # in percent
    boot.gain("merged", "single", "base")            # normalised gain, in percent
    str(boot.mean("merged"))                         # "58.2 [55.1, 61.0]"

- **Stratified**: each draw resamples, with replacement, n_t example indices within each task t (n_t the
  task's example count), so every draw keeps every task at its own size and weight.
- **Paired**: a draw's indices are the same for every row (model) that has the task, so a statistic
  comparing rows sees the same examples on both sides; the rows' example sets must be the same.
- The draws of task t come from their own generator, ``numpy.random.default_rng([seed, task_seed(t)])``,
  as ``rng.integers(0, n_t, size=(draws, n_t))`` over the task's examples in sorted id order: the
  intervals of a task do not change when other tasks are added, and a test can re-draw them by hand.
- A row's score is the mean over tasks of its per-task means (equal task weight). Intervals are the
  2.5th and 97.5th percentiles of the statistic over the draws (numpy's default linear interpolation);
  the value is the statistic on the data as observed (the plug-in estimate).

numpy only (no scipy); numpy is imported inside the functions that need it, as torch is elsewhere.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubtool.errors import HubError

if TYPE_CHECKING:
    import numpy as np

DRAWS = 2000
LEVEL = 0.95

# One row's outcomes on one task: a list (example ids 0..n-1) or {example id: outcome}.
Outcomes = Sequence[float] | Mapping[Hashable, float]


@dataclass(frozen=True)
class Estimate:
    """A statistic's plug-in value and its percentile interval; `draws` holds the statistic on every
    bootstrap draw, [draws]. NaN where the statistic is undefined (a ratio's zero denominator: NaN
    throughout; 0 / 0 on some draw: the interval); an end at +-inf is unbounded (x / 0 on enough draws)."""

    value: float
    low: float
    high: float
    draws: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return fmt(self)

    def as_dict(self) -> dict[str, float | None]:
        """value/low/high for JSON: None where undefined or unbounded (JSON has no NaN or infinity)."""
        return {k: (v if math.isfinite(v) else None) for k, v in (("value", self.value), ("low", self.low), ("high", self.high))}


def fmt(estimate: Estimate, digits: int = 1) -> str:
    """ "58.2 [55.1, 61.0]"; "-" for an undefined statistic, "58.2 [-]" for an undefined interval, "inf" for
    an unbounded end."""
    if math.isnan(estimate.value):
        return "-"
    if math.isnan(estimate.low) or math.isnan(estimate.high):
        return f"{estimate.value:.{digits}f} [-]"
    return f"{estimate.value:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"


def task_seed(task: str) -> int:
    """A stable 64-bit number for a task name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(task.encode()).digest()[:8], "big")


class Bootstrap:
    """Paired, stratified bootstrap over rows (models) x tasks x examples; see the module docstring.

    `outcomes[row][task]` are one row's per-example outcomes on one task (e.g. accuracy 0/100 or rougeL in
    percent): a list, its positions being the example ids, or a mapping {example id: outcome}. Every row
    that has a task must have the same example ids there, else a HubError names the task.
    """

    def __init__(
        self,
        outcomes: Mapping[str, Mapping[str, Outcomes]],
        *,
        draws: int = DRAWS,
        seed: int = 0,
        level: float = LEVEL,
    ) -> None:
        import numpy as np

        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise HubError(f"--draws {draws!r}: expected a whole number of at least 1")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise HubError(f"--seed {seed!r}: expected a whole number of at least 0")
        if not 0 < level < 1:
            raise HubError(f"level {level!r}: expected a number in (0, 1)")
        self.draws, self.seed, self.level = draws, seed, level
        # task -> (example ids in sorted order, {row: outcomes [n] in that order})
        by_task: dict[str, tuple[list[Any], dict[str, np.ndarray]]] = {}
        for row, per_task in outcomes.items():
            for task, values in per_task.items():
                ids, array = _aligned(values, row, task)
                if task not in by_task:
                    by_task[task] = (ids, {})
                elif by_task[task][0] != ids:
                    other = next(iter(by_task[task][1]))
                    raise HubError(
                        f"task {task!r}: rows {other!r} and {row!r} were scored on different examples "
                        f"({len(by_task[task][0])} vs {len(ids)}, or other ids); expected the same examples "
                        "for a paired comparison"
                    )
                by_task[task][1][row] = array
        self.rows = list(outcomes)
        self.tasks = sorted(by_task)
        self.sizes = {task: len(ids) for task, (ids, _) in by_task.items()}
        # The observed per-task means, and the same means on every draw: [draws] per (row, task).
        self._observed: dict[tuple[str, str], float] = {}
        self._drawn: dict[tuple[str, str], np.ndarray] = {}
        for task in self.tasks:
            ids, arrays = by_task[task]
            n = len(ids)
            rng = np.random.default_rng([seed, task_seed(task)])
            index = rng.integers(0, n, size=(draws, n))  # [draws, n]: the same draws for every row
            for row, array in arrays.items():
                self._observed[row, task] = float(array.mean())
                self._drawn[row, task] = array[index].mean(axis=1)  # [draws]

    def observed(self, row: str, task: str) -> float | None:
        """The row's mean outcome on the task as observed; None where the row has no outcomes there."""
        return self._observed.get((row, task))

    # ---- the statistics -------------------------------------------------------------------------

    def mean(self, row: str, tasks: Sequence[str] | None = None) -> Estimate:
        """The row's mean over tasks of its per-task means (default: every task the row has)."""
        tasks = self._tasks(tasks, row)
        value = sum(self._observed[row, t] for t in tasks) / len(tasks)
        return self._estimate(value, sum(self._drawn[row, t] for t in tasks) / len(tasks))

    def diff(self, a: str, b: str, tasks: Sequence[str] | None = None) -> Estimate:
        """mean(a) - mean(b) over the tasks both have (or `tasks`), on the same draws."""
        tasks = self._tasks(tasks, a, b)
        value = sum(self._observed[a, t] - self._observed[b, t] for t in tasks) / len(tasks)
        drawn = sum(self._drawn[a, t] - self._drawn[b, t] for t in tasks) / len(tasks)
        return self._estimate(value, drawn)

    def retention(
        self, merged: str, single: str | Mapping[str, str], tasks: Sequence[str] | None = None
    ) -> Estimate:
        """R = sum_t merged_t / sum_t single_t in percent, where single_t is row `single` or, for a mapping
        {task: row}, each task's own single-task row (default tasks: the merged row's, or the mapping's)."""
        singles = self._singles(merged, single, tasks)
        num, num_drawn = self._sum({t: merged for t in singles})
        den, den_drawn = self._sum(singles)
        return self._ratio(num, den, num_drawn, den_drawn)

    def gain(
        self,
        merged: str,
        single: str | Mapping[str, str],
        base: str,
        tasks: Sequence[str] | None = None,
    ) -> Estimate:
        """Normalised gain G = sum_t (merged_t - base_t) / sum_t (single_t - base_t) in percent: the share
        of the single experts' gain over the base model that the merge keeps."""
        singles = self._singles(merged, single, tasks)
        self._tasks(list(singles), base)
        merged_sum, merged_drawn = self._sum({t: merged for t in singles})
        single_sum, single_drawn = self._sum(singles)
        base_sum, base_drawn = self._sum({t: base for t in singles})
        return self._ratio(merged_sum - base_sum, single_sum - base_sum,
                           merged_drawn - base_drawn, single_drawn - base_drawn)  # fmt: skip

    # ---- helpers --------------------------------------------------------------------------------

    def _tasks(self, tasks: Sequence[str] | None, *rows: str) -> list[str]:
        for row in rows:
            if row not in self.rows:
                raise HubError(f"row {row!r}: not among the rows {self.rows}")
        if tasks is None:
            tasks = [t for t in self.tasks if all((r, t) in self._observed for r in rows)]
            if not tasks:
                raise HubError(f"rows {list(rows)}: no task in common")
        for task in tasks:
            for row in rows:
                if (row, task) not in self._observed:
                    raise HubError(f"task {task!r}: row {row!r} has no outcomes there")
        return list(tasks)

    def _singles(self, merged: str, single: str | Mapping[str, str], tasks: Sequence[str] | None) -> dict[str, str]:
        if isinstance(single, str):
            return dict.fromkeys(self._tasks(tasks, merged, single), single)
        chosen = list(single) if tasks is None else list(tasks)
        if not chosen:
            raise HubError("single-task rows: expected at least one task")
        for task in chosen:
            if task not in single:
                raise HubError(f"task {task!r}: no single-task row given for it")
            self._tasks([task], merged, single[task])
        return {t: single[t] for t in chosen}

    def _sum(self, rows: Mapping[str, str]) -> tuple[float, np.ndarray]:
        """sum over tasks of row_t's task mean: observed, and [draws]."""
        return (sum(self._observed[r, t] for t, r in rows.items()),
                sum(self._drawn[r, t] for t, r in rows.items()))  # fmt: skip

    def _ratio(self, num: float, den: float, num_drawn: np.ndarray, den_drawn: np.ndarray) -> Estimate:
        import numpy as np

        if den == 0:
            return Estimate(math.nan, math.nan, math.nan)
        # A draw whose denominator is 0 (e.g. single = base on the resampled examples) gives +-inf, an
        # extreme the percentiles may reach (an unbounded interval), or NaN for 0 / 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            drawn = 100 * num_drawn / den_drawn
        return self._estimate(100 * num / den, drawn)

    def _estimate(self, value: float, drawn: np.ndarray) -> Estimate:
        import numpy as np

        if np.isnan(drawn).any():
            return Estimate(float(value), math.nan, math.nan, drawn)  # some draw is undefined: so is the interval
        tail = 100 * (1 - self.level) / 2
        return Estimate(float(value), _percentile(drawn, tail), _percentile(drawn, 100 - tail), drawn)


def _percentile(drawn: np.ndarray, q: float) -> float:
    """numpy's default (linear) percentile, also where some draws are +-inf: a percentile that falls next
    to an infinite draw is that infinity, an unbounded end (numpy would say NaN, from inf * 0)."""
    import numpy as np

    if np.isfinite(drawn).all():
        return float(np.percentile(drawn, q))
    ordered = np.sort(drawn)
    position = q / 100 * (len(ordered) - 1)
    below, above = float(ordered[math.floor(position)]), float(ordered[math.ceil(position)])
    if math.isinf(below) or math.isinf(above):
        return below if below == -math.inf else above
    return below + (position - math.floor(position)) * (above - below)


def _aligned(values: Outcomes, row: str, task: str) -> tuple[list[Any], np.ndarray]:
    """(example ids sorted, outcomes [n] in that order) of one row on one task, checked finite."""
    import numpy as np

    if isinstance(values, Mapping):
        try:
            ids = sorted(values)
        except TypeError:
            raise HubError(f"task {task!r}, row {row!r}: example ids must be of one sortable type") from None
        raw = [values[i] for i in ids]
    else:
        ids, raw = list(range(len(values))), list(values)
    if not raw:
        raise HubError(f"task {task!r}, row {row!r}: expected at least one example outcome")
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise HubError(f"task {task!r}, row {row!r}: expected numbers as outcomes") from None
    if array.ndim != 1 or not np.isfinite(array).all():
        raise HubError(f"task {task!r}, row {row!r}: expected one finite number per example")
    return ids, array
