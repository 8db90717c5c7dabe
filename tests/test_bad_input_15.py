"""Issue 15 §8, bad input on compose, generate, pull and push: each class through the real CLI in a
subprocess (`python -m hubtool`), pull and push against a real `hub serve` (tests/hubserver.py). Each ends
in exit 1 with one `Error:` line that names the file, option or field and what was expected; nothing is
half-written and nothing hangs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from fuzzing import World

# --- running the CLI ------------------------------------------------------------------------------------


def hub(world: World, *argv: str | bytes | Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """`hub ARGV` in a subprocess with the world's HUB_HOME (bytes arguments go to argv as they are)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUB_"))}
    base.update(HUB_HOME=str(world.home), COLUMNS="200", **env)
    args = [a if isinstance(a, bytes) else str(a) for a in argv]
    return subprocess.run([sys.executable, "-m", "hubtool", *args], env=base, capture_output=True, timeout=timeout,
                          check=False)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The failure contract: exit 1 and stderr exactly one 'Error: ...' line (no traceback, no exit 2)."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, f"exit {result.returncode}: {stderr[-3000:]}"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr[-3000:]
    return lines[0]


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    return result.stdout.decode(errors="replace")


# --- compose -----------------------------------------------------------------------------------------------


def test_compose_config_on_a_fifo_is_refused_without_hanging(world: World, tmp_path: Path) -> None:
    fifo = tmp_path / "recipe.fifo"
    os.mkfifo(fifo)
    line = error_line(hub(world, "compose", "--config", fifo, "--dry-run", timeout=60))
    assert str(fifo) in line and "not a regular file" in line, line


def test_compose_config_on_dev_zero_is_refused(world: World) -> None:
    line = error_line(hub(world, "compose", "--config", "/dev/zero", "--dry-run", timeout=60))
    assert "/dev/zero" in line and "not a regular file" in line, line


def test_compose_config_larger_than_the_cap(world: World, tmp_path: Path) -> None:
    from hubtool.merge.recipe import MAX_RECIPE_BYTES

    path = tmp_path / "big.yaml"
    path.write_bytes(world.recipe.encode() + b"#" * MAX_RECIPE_BYTES)
    line = error_line(hub(world, "compose", "--config", path, "--dry-run"))
    assert str(path) in line and f"at most {MAX_RECIPE_BYTES}" in line, line


def test_yaml_recipe_errors_say_yaml(world: World, tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("merge_method: ties\nexperts: [fz@1]\nselect: {tasks: " + "[" * 20 + "]" * 20 + "}\n")
    line = error_line(hub(world, "compose", "--config", path, "--dry-run"))
    assert str(path) in line and "YAML nested too deeply" in line and "JSON" not in line, line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--method", "task-arithmetic", "--lambda", "1e300"], ["--lambda", "1e+300"]),
        (["--method", "task-arithmetic", "--weights", "1e300,1"], ["--weights"]),
        (["--method", "mean", "--weights", "1e300,1e300"], ["--weights"]),
        (["--method", "task-arithmetic", "--lambda", "1e8", "--dtype", "float16"], ["float16"]),
    ],
    ids=["lambda", "weights", "mean-weights", "finite-times-lambda"],
)
def test_compose_out_refuses_a_model_with_infinities(world: World, tmp_path: Path, args: list[str],
                                                     words: list[str]) -> None:
    out = tmp_path / "merged"
    line = error_line(hub(world, "compose", "--experts", "fz,fzl", *args, "--out", out))
    assert "--out" in line and "not finite" in line, line
    for word in words:
        assert word in line, line
    assert not out.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name != "merged"], list(tmp_path.iterdir())


def _import_with_config(world: World, name: str, config: dict) -> None:
    """Register a copy of the world's sparse expert whose stored config is `config`."""
    from hubtool.format import pack_bytes, unpack

    expert = unpack(world.packed)
    expert.name, expert.config = name, config
    path = world.path(".safetensors")
    path.write_bytes(pack_bytes(expert))
    world.must("import", path, "--name", name)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"eval": ["test"]}, ["config.eval", "mapping"]),
        ({"eval": "test"}, ["config.eval", "mapping"]),
        ({"eval": {"limit": "all"}}, ["config.eval.limit", "whole number"]),
        ({"eval": {"split": ["test"]}}, ["config.eval.split", "train, validation or test"]),
        ({"eval": {"max_new_tokens": 0}}, ["config.eval.max_new_tokens", "at least 1"]),
        ({"eval": {"max_prompt_tokens": 1.5}}, ["config.eval.max_prompt_tokens", "whole number"]),
    ],
    ids=["list", "string", "limit-text", "split-list", "tokens-zero", "prompt-float"],
)
def test_compose_eval_with_a_stored_eval_config_of_the_wrong_shape(world: World, tmp_path: Path, config: dict,
                                                                   words: list[str]) -> None:
    name = f"ev{abs(hash(json.dumps(config))) % 10**8}"
    _import_with_config(world, name, config)
    out = tmp_path / "merged"
    line = error_line(hub(world, "compose", "--experts", name, "--out", out, "--eval"))
    assert f"{name}@1" in line, line
    for word in words:
        assert word in line, line
    assert not out.exists()  # refused before the merge is written


def test_compose_eval_with_good_stored_settings_scores_the_merge(world: World, tmp_path: Path) -> None:
    """The check above refuses only bad settings: good ones (and null limit: all) score the merged model."""
    _import_with_config(world, "evok", {"eval": {"split": "test", "limit": 2, "max_new_tokens": 2,
                                                 "max_prompt_tokens": None}})
    tasks = tmp_path / "tasks" / "colors"
    tasks.mkdir(parents=True)
    (tasks / "train.jsonl").write_text(world.task_jsonl)
    out = tmp_path / "merged"
    printed = ok(hub(world, "compose", "--experts", "evok", "--out", out, "--eval", "--json",
                     HUB_TASKS_PATH=str(tmp_path / "tasks")))
    rows = json.loads(printed)["evaluation"]
    assert [(r["task"], r["expert"], r["examples"]) for r in rows] == [("colors", "evok@1", 2)], rows
    assert json.loads((out / "hubtool.json").read_text())["evaluation"] == rows


# --- generate ----------------------------------------------------------------------------------------------


def test_generate_prompt_with_bytes_that_are_not_utf8(world: World) -> None:
    line = error_line(hub(world, "generate", "--base", world.base, b"what \xff color ?"))
    assert "PROMPT" in line and "UTF-8" in line and "0xff" in line, line


# --- pull: endpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://a:b:c", "http://x\x01y", "ftp://x", "nohost", "http://",
                                      "http://127.0.0.1:99999", "http://exa mple.com"])
def test_pull_with_a_malformed_endpoint(world: World, endpoint: str) -> None:
    line = error_line(hub(world, "pull", "org/x", "--endpoint", endpoint))
    assert "--endpoint" in line and "http://" in line, line


def test_a_malformed_hf_endpoint_is_named(world: World) -> None:
    line = error_line(hub(world, "pull", "org/x", HF_ENDPOINT="http://[::1"))
    assert "HF_ENDPOINT" in line, line


# --- the catalog's schema revision ---------------------------------------------------------------------


def test_an_unknown_schema_revision_says_what_is_wrong(world: World, tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    with sqlite3.connect(world.home / "registry.db") as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # the world's catalog as it is (its WAL included)
        dst.execute("UPDATE alembic_version SET version_num = 'zzz'")
    line = error_line(hub(world, "list", HUB_CATALOG=f"sqlite:///{db}"))
    assert "'zzz'" in line and "is newer" not in line and "not one this hubtool knows" in line, line
