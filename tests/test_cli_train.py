"""`hub tasks`, `hub train` and `hub eval` run for real: the `hub` script in a subprocess, a tiny random
Llama with a word-level tokenizer saved as a local base model folder, a JSONL task, a real catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import hub, ok, ok_json, one_line_error, store_files
from tiny import make_tiny_llama, save_word_tokenizer

COLORS = ["red", "blue", "green", "pink"]
THINGS = [f"thing{i}" for i in range(60)]


@pytest.fixture
def colors_task(tmp_path: Path) -> tuple[Path, Path]:
    """(base model folder, task file): 'what color is thingN ?' -> one of four colours."""
    base = tmp_path / "base"
    make_tiny_llama(base)
    save_word_tokenizer(base, ["what", "color", "is", "?", *COLORS, *THINGS])
    data = tmp_path / "colors.jsonl"
    rows = [{"input": f"what color is {t} ?", "output": COLORS[i % 4], "options": COLORS} for i, t in enumerate(THINGS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base, data


@pytest.mark.slow
def test_train_eval_list_show(hub_home: Path, colors_task: tuple[Path, Path]) -> None:
    base, data = colors_task
    common = ["--base", base, "--data", data, "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2",
              "--max-length", "32", "--eval-limit", "4", "--quiet"]
    out = ok(hub("train", "--task", "colors", "--kind", "sparse", "--keep-ratio", "0.1", "--mask-interval", "1", *common))
    assert "Registered colors-sparse@1" in out
    ok(hub("train", "--task", "colors", "--method", "lora", "--rank", "2", *common))  # --kind's old name

    rows = {r["ref"]: r for r in ok_json(hub("list", "--task", "colors", "--json"))}
    assert set(rows) == {"colors-sparse@1", "colors-lora@1"}
    sparse = rows["colors-sparse@1"]
    # keep ratio is exact per weight: round(0.1 x numel) of q [64x64], k and v [32x64], in two layers
    assert sparse["kind"] == "sparse" and sparse["nnz"] == 2 * (410 + 205 + 205)
    assert sparse["base"] == str(base.resolve())
    assert {"train_loss", "val_loss", "accuracy"} <= set(sparse["metrics"]["colors"])
    assert rows["colors-lora@1"]["kind"] == "lora"
    assert sparse["config"]["data"]["sha256"] == rows["colors-lora@1"]["config"]["data"]["sha256"]
    # the final eval's per-example outcomes are stored beside its metrics (one scoring path: evaluate.score)
    from hubtool.registry import Catalog

    with Catalog() as cat:
        stored = cat.examples("colors-sparse@1", "colors")
    assert [r["idx"] for r in stored] == [0, 1, 2, 3]
    assert sum(r["value"] for r in stored) / 4 == pytest.approx(sparse["metrics"]["colors"]["accuracy"])

    # the base model's score, then the expert's own: stored, and shown as a gain
    base_scores = ok_json(hub("eval", "--base", base, "--task", data, "--limit", "8", "--json"))
    expert_scores = ok_json(hub("eval", "colors-sparse", "--task", data, "--limit", "8", "--json"))
    assert 0 <= base_scores["accuracy"] <= 100 and 0 <= expert_scores["accuracy"] <= 100
    shown = ok_json(hub("show", "colors-sparse", "--json"))
    assert shown["metrics"]["colors"]["accuracy"] == pytest.approx(expert_scores["accuracy"])
    assert shown["gain"]["colors"]["accuracy"] == pytest.approx(expert_scores["accuracy"] - base_scores["accuracy"])


def test_tasks_lists_builtins_and_the_search_path(hub_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tasks" / "echo"
    folder.mkdir(parents=True)
    for split, n in (("train", 5), ("validation", 2), ("test", 3)):
        rows = [{"input": f"say {split} {i}", "output": f"{split} {i}"} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    infos = {t["name"]: t for t in ok_json(hub("tasks", "--json", HUB_TASKS_PATH=str(tmp_path / "tasks")))}
    assert infos["echo"]["sizes"] == {"train": 5, "validation": 2, "test": 3}
    assert {"boolq", "nq_open", "xsum", "commonsenseqa"} <= set(infos)
    assert infos["boolq"]["sizes"]["train"] > 1000


def test_train_errors_are_one_line_and_register_nothing(hub_home: Path, colors_task: tuple[Path, Path], tmp_path: Path) -> None:
    base, data = colors_task
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x", "output": "y"}\n{"input": "no output"}\n')
    one_line_error(hub("train", "--task", "t", "--base", base, "--data", tmp_path / "missing.jsonl", "--max-steps", "1"))
    one_line_error(hub("train", "--task", "t", "--base", base, "--data", bad, "--max-steps", "1"), "bad.jsonl:2")
    one_line_error(hub("train", "--task", "t", "--base", base, "--data", data, "--method", "dense"), "method")
    one_line_error(hub("train", "--task", "t", "--base", base, "--data", data, "--keep-ratio", "1.5"), "--keep-ratio")
    one_line_error(hub("train", "--task", "t", "--base", base, "--data", data, "--targets", "nothing_here"), "nothing_here")
    one_line_error(hub("eval", "nope", "--task", data), "nope")
    assert ok_json(hub("list", "--json")) == [] and store_files(hub_home) == []


@pytest.mark.slow
def test_train_refuses_bad_settings_before_the_model_loads(hub_home: Path, colors_task: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    """Each bad setting is one line and exit 1 from a base folder that holds a config and no weights: the
    refusal comes before any weight is read (the last case shows such a base fails only when loading)."""
    import shutil

    base, data = colors_task
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(base / "config.json", bare / "config.json")  # the tiny Llama: q [64, 64], k and v [32, 64]
    cases = {
        ("--kind", "bogus"): ["--kind 'bogus': expected one of sparse, block-sparse, lora, full"],
        ("--method", "bogus"): ["--method 'bogus': expected one of sparse, block-sparse, lora, full"],
        ("--kind", "lora", "--method", "full"): ["--method is the old name of --kind"],
        ("--mask-steps", "0"): ["--mask-steps", "at least 1"],
        ("--targets", ""): ["--targets ''"],
        ("--lr", "1e300"): ["--lr"],
        ("--lr", "nan"): ["--lr"],
        ("--lr", "2"): ["--lr"],
        ("--kind", "block-sparse", "--block-size", "65"): ["--block-size 65", "q_proj [64, 64]", "at most 64"],
        ("--kind", "block-sparse", "--block-size", "1000000000"): ["--block-size 1000000000"],
        ("--kind", "lora", "--rank", "33"): ["--rank 33", "k_proj [32, 64]", "at most 32"],
    }
    for args, words in cases.items():
        result = hub("train", "--task", "t", "--base", bare, "--data", data, "--max-steps", "1", *args)
        one_line_error(result, *words)
        assert result.returncode == 1, (args, result.stderr)
    # in bounds (and --block-size / --rank ignored by the kinds that have none), the bare base fails at loading
    for args in (("--kind", "lora", "--rank", "32"), ("--kind", "sparse", "--block-size", "100000", "--rank", "100000")):
        one_line_error(hub("train", "--task", "t", "--base", bare, "--data", data, "--max-steps", "1", *args),
                       "cannot load a base model")
    assert ok_json(hub("list", "--json")) == [] and store_files(hub_home) == []
    help_text = ok(hub("train", "--help"))
    assert "--kind" in help_text and "--method" not in help_text  # the old name works, hidden


@pytest.mark.slow
def test_accelerate_launch_trains_data_parallel_and_registers_once(hub_home: Path, colors_task: tuple[Path, Path]) -> None:
    """`accelerate launch -m hubtool train` on two CPU processes: both train, rank 0 alone registers."""
    import os
    import shutil
    import subprocess
    import sys

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate is not installed")
    base, data = colors_task
    argv = [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "hubtool", "train", "--task", "colors", "--data", str(data),
            "--base", str(base), "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--eval-limit", "2",
            "--quiet"]
    done = subprocess.run(argv, env=dict(os.environ), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("Registered colors-sparse@1") == 1
    assert [r["ref"] for r in ok_json(hub("list", "--json"))] == ["colors-sparse@1"]
