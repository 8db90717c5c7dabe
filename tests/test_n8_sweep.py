"""n8 decisions checked on hand-made inputs, where the right answer can be read off: the λ sweep's rule for
extending its grid past an end (hubtool.experiment.n8.next_lam), and the report's lines built from per-example
files (N8Report): whether a merge beats the tuned overlap-mean, where seeds differ past the evaluation noise,
retention at each N, and the sweeps' names."""

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


# --- what decides compose's default: N8Report.default_lines on hand-made per-example files ---------------

def _write_run(folder, values: dict[str, list[float] | dict[str, list[float]]],
               rows: dict[str, tuple[str, str | None]], row_tasks: dict[str, list[str]] | None = None) -> None:
    """An n8 folder: one subject per row (its name = the row label's slug), two tasks, given outcomes (one list
    for every task, or one per task); `row_tasks` limits a row to some tasks (a subset merge)."""
    import json

    tasks = ["a", "b"]
    state_rows = {}
    for label, (group, single) in rows.items():
        subject = label.replace(" ", "_").replace(":", "").replace("=", "").replace(",", "")
        mine = (row_tasks or {}).get(label, tasks)
        for task in mine:
            got = values[label][task] if isinstance(values[label], dict) else values[label]
            path = folder / "evals" / subject / f"{task}.test.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            head = {"subject": subject, "task": task, "split": "test", "n": len(got), "commit": "x"}
            path.write_text("\n".join([json.dumps(head)] + [json.dumps({"idx": i, "value": v})
                                                              for i, v in enumerate(got)]) + "\n")
        state_rows[label] = {"subjects": {t: subject for t in mine}, "kind": "sparse" if label != "base model" else "base",
                             "single": single, "group": group, "note": ""}
    (folder / "state.json").write_text(json.dumps({"preset": "n8", "held_in": tasks, "held_out": [],
                                                   "rows": state_rows}))


def test_the_report_names_a_merge_that_beats_overlap_mean_and_only_then(tmp_path) -> None:
    from hubtool.experiment.n8_report import N8Report

    n = 40
    base, single = [0.0] * n, [100.0] * n
    main = [100.0] * (n // 2) + [0.0] * (n // 2)  # 50
    better = [100.0] * (3 * n // 4) + [0.0] * (n // 4)  # 75, right on every example main gets right
    same = main[::-1]  # 50, a different half
    rows = {"base model": ("base", None), "sparse single-task": ("single", None),
            "sparse merged: overlap-mean λ=1 (val)": ("merged", "sparse single-task"),
            "sparse merged: better": ("merged", "sparse single-task"),
            "sparse merged: same": ("merged", "sparse single-task")}
    values = {"base model": base, "sparse single-task": single, "sparse merged: overlap-mean λ=1 (val)": main,
              "sparse merged: better": better, "sparse merged: same": same}
    _write_run(tmp_path / "won", values, rows)
    line = N8Report(tmp_path / "won").default_lines()[0]
    assert "sparse merged: better 25.0 [" in line and "(above)" in line and "sparse merged: same 0.0 [" in line
    assert "Beating it with the interval clear of 0: sparse merged: better, the evidence" in line

    del rows["sparse merged: better"], values["sparse merged: better"]
    _write_run(tmp_path / "none", values, rows)
    line = N8Report(tmp_path / "none").default_lines()[0]
    assert "(above)" not in line and "default stays overlap-mean" in line


def test_the_seed_lines_name_the_tasks_where_training_noise_dominates(tmp_path) -> None:
    from hubtool.experiment.n8_report import N8Report

    n = 40
    half = [100.0] * (n // 2) + [0.0] * (n // 2)
    rows = {"sparse single-task": ("single", None), "sparse single-task seed 1": ("single", None)}
    # Seed 1 agrees on task a and gets every example of b right: 100 against 50, far past b's interval.
    _write_run(tmp_path / "swing", {"sparse single-task": half,
                                    "sparse single-task seed 1": {"a": half, "b": [100.0] * n}}, rows)
    lines = N8Report(tmp_path / "swing").seed_lines()
    assert lines[2].startswith("- sparse: seed 1 − seed 0 on the held-in mean: 25.0 [")
    per_task = lines[3]
    assert "**training noise dominates** on b 50.0 [" in per_task and " a " not in per_task

    # The same outcomes in another order on each task: each mean is equal, so nothing dominates.
    _write_run(tmp_path / "calm", {"sparse single-task": half, "sparse single-task seed 1": half[::-1]}, rows)
    lines = N8Report(tmp_path / "calm").seed_lines()
    assert "the seeds agree within the evaluation noise" in lines[2]
    assert lines[3] == "  - per task: every task's seeds agree within its evaluation interval."


def test_the_retention_table_gives_each_n_of_the_plot(tmp_path) -> None:
    from hubtool.experiment.n8_report import N8Report

    n = 40
    rows = {"base model": ("base", None), "sparse single-task": ("single", None),
            "sparse merged: overlap-mean λ=1 (val)": ("merged", "sparse single-task"),
            "sparse merged: overlap-mean λ=1, N=1": ("subset 1", "sparse single-task")}
    three_quarters = [100.0] * (3 * n // 4) + [0.0] * (n // 4)
    values = {"base model": [0.0] * n, "sparse single-task": [100.0] * n,
              "sparse merged: overlap-mean λ=1 (val)": {"a": three_quarters, "b": [0.0] * n},  # R 37.5% at N=2
              "sparse merged: overlap-mean λ=1, N=1": three_quarters}  # R 75% at N=1
    _write_run(tmp_path / "run", values, rows, row_tasks={"sparse merged: overlap-mean λ=1, N=1": ["a"]})
    report = N8Report(tmp_path / "run")
    assert [(n, round(e.value, 1)) for n, e in report.retention_points()["sparse"]] == [(1, 75.0), (2, 37.5)]
    table = report.subset_lines(report.retention_points())
    assert table[0] == "| N (the first N held-in tasks) | sparse R % |"
    assert table[2].startswith("| 1 | 75.0 [") and table[3].startswith("| 2 | 37.5 [")

    del rows["sparse merged: overlap-mean λ=1, N=1"]
    _write_run(tmp_path / "main-only", values, rows)
    only = N8Report(tmp_path / "main-only")
    assert only.subset_lines(only.retention_points()) == []  # one N: the plot alone says it


def test_sweep_keys_read_as_the_table_rows_name_them() -> None:
    from hubtool.experiment.n8_report import sweep_name

    assert sweep_name("sparse overlap-mean") == "sparse overlap-mean"
    assert sweep_name("sparse-kl0p01 overlap-mean") == "sparse k=0.01 overlap-mean"
    assert sweep_name("sparse-kl1 overlap-mean") == "sparse k=1 overlap-mean"
    assert sweep_name("sparse-avoid overlap-mean") == "sparse avoid β=inf overlap-mean"


def test_report_only_reads_the_files_alone_with_no_task_data_or_base_model(tmp_path, monkeypatch) -> None:
    """A fresh clone without ../shared has no sst2 or squad: --report-only must not load tasks or the base."""
    from hubtool.experiment import experiment

    home = tmp_path / "home"
    monkeypatch.setenv("HUB_HOME", str(home))
    n = 40
    rows = {"base model": ("base", None), "sparse single-task": ("single", None),
            "sparse merged: overlap-mean λ=1 (val)": ("merged", "sparse single-task")}
    _write_run(tmp_path / "results" / "n8", {"base model": [0.0] * n, "sparse single-task": [100.0] * n,
                                             "sparse merged: overlap-mean λ=1 (val)": [50.0] * n}, rows)
    # Tasks 'a' and 'b' exist nowhere but in the files: loading them would fail before any report.
    result = experiment("n8", tasks=["a", "b"], out=tmp_path / "results", report_only=True)
    md = (tmp_path / "results.md").read_text()
    assert result["report"] == tmp_path / "results.md"
    assert "| sparse merged: overlap-mean λ=1 (val) | 50.0 [50.0, 50.0] | 50.0 [50.0, 50.0] |" in md
    assert not (home / "models").exists()  # the base model was never converted
