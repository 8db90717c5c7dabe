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
    base.update({"HUB_HOME": str(world.home), "COLUMNS": "200"})
    base.update(env)
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
                                      "http://127.0.0.1:99999", "http://exa mple.com", "http://\udcff"])
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


# --- pull and push against a real `hub serve` ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("starlette")
    from hubserver import Server, write_tokens

    root = tmp_path_factory.mktemp("serve15")
    srv = Server(root / "root", write_tokens(root / "tokens.txt"))
    yield srv
    srv.stop()


def on_server(server, world: World, tmp: Path, home: Path | None = None, **extra: str) -> dict[str, str]:
    """hub()'s environment for talking to `server` as alice (HUB_HOME: `home`, default the world's)."""
    from hubserver import ALICE

    env = {"HF_ENDPOINT": server.url, "HF_TOKEN": ALICE, "HF_HOME": str(tmp / "hf-home"),
           "HF_HUB_CACHE": str(tmp / "hf-cache"), **extra}
    if home is not None:
        env["HUB_HOME"] = str(home)
    return env


def upload(server, repo: str, files: dict[str, bytes]) -> None:
    from huggingface_hub import CommitOperationAdd

    api = server.api()
    api.create_repo(repo, exist_ok=True)
    api.create_commit(repo, [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()],
                      commit_message="by hand")


def pulled(home: Path) -> list[str]:
    from hubtool.registry import Catalog

    db = home / "registry.db"
    if not db.exists():
        return []
    cat = Catalog(f"sqlite:///{db}", blobs=home / "blobs")
    try:
        return sorted(r.ref for r in cat.list())
    finally:
        cat.close()


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda r: r.__setitem__("lineage", {"parents": 5}), ["lineage.parents", "JSON array", "5"]),
        (lambda r: r.__setitem__("lineage", {"parents": [{"ref": "a@1", "role": 3}]}), ["lineage.parents[0].role"]),
        (lambda r: r.__setitem__("ref", ["fz@1"]), ["ref", "a string"]),
        (lambda r: r.__setitem__("ref", 7), ["ref", "a string"]),
        (lambda r: r.__setitem__("description", "d" * 3_000_000), ["description", "at most 16384 characters"]),
        (lambda r: r.__setitem__("metrics", {"colors": {"m" * 2_000_000: 1.0}}),
         ["metrics['colors']", "2,000,000 characters", "at most 128"]),
        (lambda r: r.__setitem__("config", {"notes": "c" * (2 << 20)}), ["config", "at most 1,048,576"]),
        (lambda r: r.__setitem__("task_info", {"sizes": {"train": "3"}}), ["task_info.sizes['train']", "whole number"]),
    ],
    ids=["parents-int", "parent-role-int", "ref-list", "ref-int", "description-3MB", "metric-name-2MB", "config-2MB",
         "sizes-text"],
)
def test_pull_refuses_a_record_with_wrong_types_or_sizes(server, world: World, tmp_path: Path, edit,
                                                         words: list[str]) -> None:
    record = json.loads(json.dumps(world.record))
    edit(record)
    repo = f"alice/rec-{abs(hash(tmp_path.name)) % 10**8}"
    upload(server, repo, {"fz.safetensors": world.packed, "hubtool.json": json.dumps(record).encode()})
    home = tmp_path / "home"
    line = error_line(hub(world, "pull", repo, **on_server(server, world, tmp_path, home)))
    assert repo in line and "expert 'fz'" in line and len(line) < 600, line
    for word in words:
        assert word in line, line
    assert pulled(home) == []  # nothing registered


def test_pull_of_a_library_holding_one_record_10000_times_registers_it_once(server, world: World,
                                                                           tmp_path: Path) -> None:
    record = {**world.record, "file": "experts/fz.safetensors"}
    doc = {"hub_format": "hubtool-expert-library", "experts": [record] * 10_000}
    upload(server, "alice/copies", {"experts/fz.safetensors": world.packed,
                                    "hubtool_library.json": json.dumps(doc).encode()})
    home = tmp_path / "home"
    printed = ok(hub(world, "pull", "alice/copies", "--json", **on_server(server, world, tmp_path, home)))
    assert json.loads(printed)["registered"] == ["fz@1"]
    assert pulled(home) == ["fz@1"]
    # one more copy than a library may list: refused, naming the file and the cap
    doc["experts"].append(record)
    upload(server, "alice/copies", {"hubtool_library.json": json.dumps(doc).encode()})
    line = error_line(hub(world, "pull", "alice/copies", **on_server(server, world, tmp_path, tmp_path / "home2")))
    assert "hubtool_library.json" in line and "10,001 experts" in line and "at most 10,000" in line, line


def test_push_into_a_repo_with_a_users_files_refuses_without_force(server, world: World, tmp_path: Path) -> None:
    api = server.api()
    upload(server, "alice/mine", {"weights/model.safetensors": b"the user's own weights", "README.md": b"# mine\n"})
    env = on_server(server, world, tmp_path)
    line = error_line(hub(world, "push", "fz", "--repo", "alice/mine", **env))
    assert "alice/mine" in line and "weights/model.safetensors" in line and "--force" in line, line
    assert "weights/model.safetensors" in api.list_repo_files("alice/mine")
    ok(hub(world, "push", "fz", "--repo", "alice/mine", "--force", **env))
    files = api.list_repo_files("alice/mine")
    assert "weights/model.safetensors" not in files and "fz.safetensors" in files


def test_push_of_an_expert_onto_a_composed_model_refuses(server, world: World, tmp_path: Path) -> None:
    api = server.api()
    env = on_server(server, world, tmp_path)
    out = tmp_path / "composed"
    ok(hub(world, "compose", "--experts", "fz,fzl", "--out", out, "--push", "alice/comp", **env))
    before = api.list_repo_files("alice/comp")
    assert "model.safetensors.index.json" in before and "hubtool_recipe.yml" in before
    line = error_line(hub(world, "push", "fz", "--repo", "alice/comp", **env))
    assert "alice/comp" in line and "model-00001-of-00001.safetensors" in line and "--force" in line, line
    assert api.list_repo_files("alice/comp") == before
    # the same folder again: nothing foreign, nothing to do
    assert "nothing to commit" in ok(hub(world, "push", out, "--repo", "alice/comp", **env))


def test_push_still_deletes_what_its_own_earlier_push_wrote(server, world: World, tmp_path: Path) -> None:
    """fz then fzl into one repo: fz.safetensors (named by the repo's hubtool.json) and the SHiRA files go,
    no --force needed; a user's file in the same repo, unmanaged (LICENSE), stays."""
    api = server.api()
    env = on_server(server, world, tmp_path)
    ok(hub(world, "push", "fz", "--repo", "alice/swap15", **env))
    upload(server, "alice/swap15", {"LICENSE": b"mine"})
    assert {"fz.safetensors", "adapter_model.safetensors"} <= set(api.list_repo_files("alice/swap15"))
    result = json.loads(ok(hub(world, "push", "fzl", "--repo", "alice/swap15", "--json", **env)))
    assert "fz.safetensors" in result["deleted"], result
    files = set(api.list_repo_files("alice/swap15"))
    assert "fz.safetensors" not in files and {"fzl.safetensors", "LICENSE"} <= files
