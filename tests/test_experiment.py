"""`hub experiment --preset smoke`: the whole experiment on a tiny random model and generated tasks,
through the real CLI in a subprocess, against a real SQLite catalog; then the cache, the plan's
command lines, and the pieces (cache keys, the scorer's restore, the tuned merge) one by one."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def hub(*args: str, home: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_HOME": str(home), "COLUMNS": "200"}
    env.pop("HUB_CATALOG", None)
    env.pop("HUB_EXPERIMENT_CATALOG", None)
    return subprocess.run([sys.executable, "-m", "hubtool", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full smoke run (the test suite's share of the experiment), its report and its home."""
    root = tmp_path_factory.mktemp("experiment")
    home, out = root / "hub", root / "results"
    first = ok(hub("experiment", "--preset", "smoke", "--out", str(out), home=home))
    return {"home": home, "out": out, "md": out.with_suffix(".md"), "stdout": first}


def table_rows(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 4 and cells[0] not in ("model", "setting", "kind"):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_smoke_writes_the_whole_report(smoke: dict) -> None:
    md = smoke["md"].read_text()
    assert "<!-- section: preset smoke -->" in md and "(complete)" in md
    rows = table_rows(md)
    for row in ("base model", "sparse single-task", "lora single-task", "sparse merged: overlap-mean",
                "sparse merged: mean", "sparse merged: ties", "lora merged: mean", "lora merged: ties",
                "sparse merged: overlap-mean+tuned"):
        assert row in rows, f"missing row {row!r} in\n{md}"
        # held-in mean, held-out mean, retention, then one cell per task: every score is measured
        assert "…" not in rows[row], f"{row}: unmeasured cells {rows[row]}"
    assert "lora merged: overlap-mean" not in rows  # on a dense kind overlap-mean is the mean: not run twice
    # The held-in mean is the mean of the task cells (3 held-in tasks, then 1 held-out).
    cells = rows["sparse merged: ties"]
    assert float(cells[0]) == pytest.approx(sum(float(c) for c in cells[3:6]) / 3, abs=0.06)
    assert float(cells[1]) == pytest.approx(float(cells[6]), abs=0.06)
    for n in (1, 2, 3, 4):
        assert re.search(rf"^{n}\. ", md, re.MULTILINE), f"no verdict for claim {n}"
    assert "Command: `hub experiment --preset smoke --out" in md
    assert re.search(r"commit `[0-9a-f]{7,}", md) or "not a git checkout" in md
    ran = int(re.search(r"(\d+) jobs run", smoke["stdout"]).group(1))
    assert re.search(rf"the jobs were run by `[^`]+` \({ran} jobs\)\.", md), md
    assert re.search(r"wall time per stage \| sweep [\d.]+ min, .*train [\d.]+ min", md)
    images = smoke["out"]
    for png in ("smoke-retention.png", "smoke-overlap.png"):
        assert (images / png).read_bytes()[:8] == PNG
        assert f"(results/{png})" in md


@pytest.mark.slow
def test_a_rerun_runs_nothing_and_the_plan_is_empty(smoke: dict) -> None:
    again = ok(hub("experiment", "--preset", "smoke", "--out", str(smoke["out"]), home=smoke["home"]))
    assert re.search(r"^0 jobs run, (\d+) found in the catalog", again, re.MULTILINE), again
    found = int(re.search(r"(\d+) found in the catalog", again).group(1))
    ran = int(re.search(r"(\d+) jobs run", smoke["stdout"]).group(1))
    assert found == ran > 40
    plan = ok(hub("experiment", "--preset", "smoke", "--plan", home=smoke["home"]))
    assert plan.startswith("# hub experiment --preset smoke: 0 pending jobs of ")


@pytest.mark.slow
def test_the_report_keeps_other_sections(smoke: dict, tmp_path: Path) -> None:
    from hubtool.experiment.report import write_section

    md = tmp_path / "r.md"
    write_section(md, "a", "first A")
    write_section(md, "b", "B")
    write_section(md, "a", "second A")
    text = md.read_text()
    assert "second A" in text and "first A" not in text and "B" in text
    assert text.index("section: a") < text.index("section: b")


@pytest.mark.slow
def test_plan_lines_are_real_commands_that_fill_the_same_cache(tmp_path: Path) -> None:
    """--plan's command lines, run as they are, produce exactly the jobs `hub experiment` would: after
    running the sweep's lines the experiment finds them done."""
    home = tmp_path / "hub"
    first = ok(hub("experiment", "--preset", "smoke", "--plan", "--kinds", "sparse", home=home))
    lines = [line for line in first.splitlines() if line.startswith("hub ")]
    assert "the lr sweep above decides the training jobs" in first
    trains = [line for line in lines if line.startswith("hub train ")]
    evals = [line for line in lines if line.startswith("hub eval ")]
    assert len(trains) == 2 and len(evals) == 4  # sweep: the paper's lr and 10x; the base on 4 tasks
    for line in (trains[0], evals[0]):
        ok(hub(*shlex.split(line)[1:], home=home))
    second = ok(hub("experiment", "--preset", "smoke", "--plan", "--kinds", "sparse", home=home))
    assert shlex.split(trains[0])[-4] not in second  # the expert's name: now done, so not pending
    assert shlex.split(trains[1]) == shlex.split(next(x for x in second.splitlines() if x.startswith("hub train")))
    assert f"pending jobs of {len(lines)}" in second.splitlines()[0]
    assert len([x for x in second.splitlines() if x.startswith("hub ")]) == len(lines) - 2


def test_held_out_tasks_can_be_any_task_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    words = ["apple", "river", "stone", "eagle", "olive", "tiger"]
    rows = [{"input": f"count : {a} {b} Answer:", "output": "two", "options": ["two", "three"]}
            for a in words for b in words]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = ok(hub("experiment", "--preset", "smoke", "--plan", "--held-out", str(folder), home=tmp_path / "hub"))
    assert "hub eval --base " in plan and f"--task {folder} " in plan


def test_bad_input_fails_in_one_line_before_any_work(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    cases = {
        ("--preset", "nope"): "--preset 'nope': expected one of smoke, quick, full",
        ("--preset", "smoke", "--tasks", "smoke-first"): "--tasks: 1 task given; merging needs at least 2",
        ("--preset", "smoke", "--held-out", "smoke-first"): "--held-out: 'smoke-first' is also held-in",
        ("--preset", "smoke", "--tasks", "smoke-first,no-such-task"): "--tasks 'no-such-task'",
        ("--preset", "smoke", "--kinds", "dense"): "--kinds: unknown kind 'dense'",
        ("--preset", "smoke", "--seeds", "0,x"): "--seeds",
        ("--preset", "smoke", "--stage", "bake"): "--stage 'bake'",
    }
    for args, message in cases.items():
        result = hub("experiment", *args, home=home)
        assert result.returncode != 0, args
        err = result.stderr.strip()
        assert len(err.splitlines()) == 1 and message in err, f"{args}: {err}"
    catalog = home / "experiments" / "catalog.db"
    if catalog.exists():  # the smoke world may be built; no expert may be
        from hubtool.registry import Catalog

        assert Catalog(f"sqlite:///{catalog}").list() == []


def _open(home: Path, monkeypatch: pytest.MonkeyPatch, **overrides):
    monkeypatch.setenv("HUB_HOME", str(home))
    monkeypatch.delenv("HUB_CATALOG", raising=False)
    from hubtool.experiment.presets import get_preset
    from hubtool.experiment.runner import Experiment

    return Experiment.open(get_preset("smoke", **overrides))


def test_cache_keys_follow_every_setting(smoke: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from hubtool.experiment.presets import KINDS

    exp = _open(smoke["home"], monkeypatch)
    planner = exp.planner()
    task = exp.tasks[0]
    job = planner.train_job(task, KINDS["sparse"], 0, 1e-3)
    assert job.key == planner.train_job(task, KINDS["sparse"], 0, 1e-3).key
    others = {planner.train_job(task, KINDS["sparse"], 1, 1e-3).key, planner.train_job(task, KINDS["sparse"], 0, 2e-3).key,
              planner.train_job(exp.tasks[1], KINDS["sparse"], 0, 1e-3).key,
              planner.train_job(task, KINDS["sparse-mlp"], 0, 1e-3).key}
    planner.preset = replace(planner.preset, steps=7)
    others.add(planner.train_job(task, KINDS["sparse"], 0, 1e-3).key)
    assert job.key not in others and len(others) == 5
    # a LoRA expert's key ignores the keep ratio (it does not change LoRA training); a sparse one's does not
    lora = planner.train_job(task, KINDS["lora"], 0, 1e-3).key
    planner.preset = replace(planner.preset, keep_ratio=0.1)
    assert planner.train_job(task, KINDS["lora"], 0, 1e-3).key == lora
    assert planner.train_job(task, KINDS["sparse"], 0, 1e-3).key != job.key


def test_scorer_restores_the_base_bit_for_bit(smoke: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hubtool.experiment.runner import Scorer

    exp = _open(smoke["home"], monkeypatch)
    plan = exp.plan()
    scorer = Scorer(exp)
    scorer.use(None)
    before = {k: v.detach().clone() for k, v in scorer.model.named_parameters()}
    names = list(plan.experts.values())
    scorer.use(names[0])
    changed = [k for k, v in scorer.model.named_parameters() if not torch.equal(v, before[k])]
    assert changed and all("proj" in k for k in changed)
    scorer.use(names[1])
    scorer.use(None)
    for k, v in scorer.model.named_parameters():
        assert torch.equal(v, before[k]), k


def test_the_tuned_merge_never_loses_to_its_start(smoke: dict) -> None:
    traces = list((smoke["home"] / "experiments").glob("tune-*.json"))
    assert len(traces) == 1
    tune = json.loads(traces[0].read_text())
    start = tune["trace"][0]["val_loss"]
    assert tune["trace"][0]["weights"] == [1.0, 1.0, 1.0]
    assert len(tune["trace"]) == 1 + 3 * 2  # each task's weight tried at 0.5 and 2.0
    ratios = [sum(a / b for a, b in zip(t["val_loss"], start)) / len(start) for t in tune["trace"]]
    assert tune["objective"] == pytest.approx(min(ratios), rel=1e-6) or tune["objective"] == 1.0
    assert tune["objective"] <= 1.0
    from hubtool.registry import Catalog

    cat = Catalog(f"sqlite:///{smoke['home'] / 'experiments' / 'catalog.db'}")
    rec = cat.get(traces[0].stem.removeprefix("tune-"))
    assert [e["parameters"]["weight"] for e in rec.config["merge"]["recipe"]["experts"]] == tune["weights"]


def test_a_customised_preset_is_its_own_report_section_and_tune_command(smoke: dict, monkeypatch) -> None:
    exp = _open(smoke["home"], monkeypatch, kinds=["sparse"], held_out=[])
    assert exp.preset.label == "smoke --kinds sparse --held-out "
    tune = next(j for j in exp.plan().jobs if j.stage == "tune")
    assert tune.argv[:7] == ["hub", "experiment", "--preset", "smoke", "--kinds", "sparse", "--held-out"]
    assert [t.name for t in exp.tasks if t.held_out] == []


def test_a_stopped_run_reports_what_it_has_as_partial(tmp_path: Path) -> None:
    home, out = tmp_path / "hub", tmp_path / "results"
    ok(hub("experiment", "--preset", "smoke", "--stage", "sweep", "--stage", "report", "--out", str(out), home=home))
    md = out.with_suffix(".md").read_text()
    assert "(**partial: cells marked … are not run yet**)" in md
    assert "Merges of all 3 experts not yet scored: sparse overlap-mean, sparse mean, sparse ties" in md
    rows = table_rows(md)
    assert "sparse merged: mean" not in rows and rows["sparse single-task"][0] == "…"
    assert "| sparse | 0.0001 (paper) | " in md  # the sweep ran: its losses are reported


def test_defects_found_adversarially_are_refused_or_fixed_before_any_work(tmp_path: Path) -> None:
    """issue 14 §0b: seeds without 0, machine-dependent cache keys, --out '' and a damaged timings.json."""
    # A seed set without 0 plans (the merged experts are the smallest seed's), in any home.
    plans = []
    for home in (tmp_path / "one", tmp_path / "elsewhere" / "two"):
        plan = ok(hub("experiment", "--preset", "smoke", "--plan", "--seeds", "2,1", home=home))
        plans.append(sorted(re.findall(r"--name (\S+)", plan)))
    assert plans[0] and all("-s1-" in n or "-s2-" in n for n in plans[0])
    # The same job has the same name wherever $HUB_HOME (and so the smoke model's folder) lies.
    assert plans[0] == plans[1]
    home = tmp_path / "one"
    for args, message in {("--out", ""): "--out '': expected a path", ("--seeds", ""): "--seeds"}.items():
        result = hub("experiment", "--preset", "smoke", *args, home=home)
        err = result.stderr.strip()
        assert result.returncode == 1 and len(err.splitlines()) == 1 and message in err, f"{args}: {err}"
    timings = home / "experiments" / "timings.json"
    timings.write_text("{not json")
    result = hub("experiment", "--preset", "smoke", "--out", str(tmp_path / "r"), home=home)
    err = result.stderr.strip()
    assert result.returncode == 1 and len(err.splitlines()) == 1 and "timings.json" in err, err
    from hubtool.registry import Catalog

    assert Catalog(f"sqlite:///{home / 'experiments' / 'catalog.db'}").list() == []
