"""The n8 protocol (issue 14) end to end on the smoke world: every step through the real CLI in a
subprocess, per-example outcomes in the catalog and in files, and the report rebuilt from the files
alone (a second home with no catalog)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_experiment import hub

pytestmark = pytest.mark.slow  # one n8 run on the smoke world: ~45 s of setup (make test-slow, CI)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("n8")
    home, out = root / "hub", root / "results"
    result = hub("experiment", "--preset", "smoke-n8", "--out", str(out), home=home, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"home": home, "out": out, "md": out.with_suffix(".md").read_text()}


def test_every_step_runs_and_the_report_has_intervals(run: dict) -> None:
    state = json.loads((run["out"] / "smoke-n8" / "state.json").read_text())
    from hubtool.experiment.n8 import STEPS

    assert state["done"] == list(STEPS)
    rows = state["rows"]
    for label in ("base model", "sparse single-task", "lora single-task", "sparse single-task seed 1",
                  "sparse merged: sparse TIES", "sparse routed: centroid", "sparse routed: arrow"):
        assert label in rows, label
    assert any(r["group"] == "diagnostic" for r in rows.values())
    assert any(label.startswith("sparse avoid") for label in rows)
    assert any(label.startswith("sparse k=0.01 merged") for label in rows)
    md = run["md"]
    assert "## Preset `smoke-n8`" in md and "Status: **complete**" in md
    # every merged row of the table has R and G with intervals: "x [lo, hi]"
    table = [line for line in md.splitlines() if line.startswith("| sparse merged: overlap-mean")]
    assert table and all(line.count("[") >= 3 for line in table), table
    assert "### The paper's claims here" in md and "### Seeds" in md and "### Diagnostics" in md
    # what decides compose's default: every other sparse merge against the tuned overlap-mean, with its interval
    line = next(x for x in md.splitlines() if x.startswith("Each other sparse merge against sparse merged: overlap-mean"))
    assert "sparse merged: sparse TIES" in line and line.count("[") >= 3 and "default" in line
    assert (run["out"] / "smoke-n8-retention.png").is_file()


def test_the_report_is_rebuilt_from_the_committed_files_alone(run: dict, tmp_path: Path) -> None:
    copy = tmp_path / "results"
    shutil.copytree(run["out"], copy)
    result = hub("experiment", "--preset", "smoke-n8", "--report-only", "--out", str(copy), home=tmp_path / "empty")
    assert result.returncode == 0, result.stderr
    # The same numbers: the table's lines are identical (the header line names the report's commit).
    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("| ")]

    assert table(copy.with_suffix(".md").read_text()) == table(run["md"])


def test_the_catalog_holds_every_evaluation_per_example(run: dict) -> None:
    from hubtool.registry import Catalog

    state = json.loads((run["out"] / "smoke-n8" / "state.json").read_text())
    cat = Catalog(f"sqlite:///{run['home'] / 'experiments' / 'catalog.db'}")
    single = state["rows"]["sparse single-task"]["subjects"]
    for task, expert in single.items():
        rows = cat.examples(expert, task, split="test")
        assert rows and [r["idx"] for r in rows] == list(range(len(rows)))
        metrics = cat.get(expert).metrics[task]
        headline = "accuracy" if "accuracy" in metrics else "rougeL"
        assert abs(sum(r["value"] for r in rows) / len(rows) - metrics[headline]) < 1e-6


def test_a_rerun_scores_and_trains_nothing(run: dict) -> None:
    result = hub("experiment", "--preset", "smoke-n8", "--out", str(run["out"]), home=run["home"], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "train " not in result.stdout and "score " not in result.stdout and "compose " not in result.stdout


def test_failing_tasks_fill_the_merge_when_the_spares_run_out(run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate set at the best gain: that task passes; the others fail, there is no spare, so they fill the
    merge to N in order of their gain, marked as such, and the report gives R and G over the passing task."""
    from dataclasses import replace

    from hubtool.experiment.n8 import N8
    from hubtool.experiment.presets import get_preset
    from hubtool.experiment.runner import Experiment

    gains = {t: g["gain"] for t, g in json.loads((run["out"] / "smoke-n8" / "state.json").read_text())["gate"].items()}
    assert len(set(gains.values())) > 1, gains  # the smoke world's experts differ, or this test shows nothing
    best = max(gains.values())
    monkeypatch.setenv("HUB_HOME", str(run["home"]))
    n8 = N8(Experiment.open(replace(get_preset("smoke-n8"), gate=best)), out=None)
    try:
        n8.gate()
    finally:
        n8.scorer.close()
    passed = [t for t, g in gains.items() if g >= best]
    failed = sorted((t for t in gains if t not in passed), key=lambda t: -gains[t])
    assert n8.held_in == passed + failed and n8.state["passed"] == passed
    assert all(n8.state["gate"][t]["filled"] for t in failed)
    assert any("fill the merge to N=3" in note for note in n8.state["notes"])
