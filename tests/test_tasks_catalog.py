"""Tasks have one home, the catalog's `tasks` table: categories, `--tasks` by task or category, the
0002 -> 0003 upgrade, and an expert's value dtype. Real catalogs (the library tests on SQLite and on
PostgreSQL) and packed experts; the real `hub` in a subprocess where the CLI is the thing (a tiny random
Llama where a model must run)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import text
from test_cli import HUB, _env, hub, hub_many, ok, ok_json, one_line_error
from test_migrations import write_0001_catalog
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.data import load_task
from hubtool.errors import HubError, NotFoundError
from hubtool.format import unpack
from hubtool.registry import Catalog, db, migrate

MULTIPLE_CHOICE = ["commonsenseqa", "mmlu", "openbookqa", "piqa", "siqa"]


@pytest.fixture
def cat(tmp_path: Path, hub_home: Path, catalog_url: str):
    with Catalog(catalog_url, blobs=tmp_path / "blobs") as c:
        yield c


def test_tasks_for_a_name_a_category_or_neither(cat: Catalog, packed: Callable[..., Path]) -> None:
    for seed, (name, task) in enumerate(
        [("sq", "squad"), ("bq", "boolq"), ("toy", "toy"), ("odd", "orphan"), ("xs", "xsum")]
    ):
        cat.register(packed(name, task, seed=seed))
    cat.add_task("toy", category="qa", data_source="/data/toy.jsonl", sizes={"train": 8})
    cat.add_task("mine", category="classify")

    # A task name stays itself: in the tasks table, a built-in or shared-data task, or an expert's task.
    for name in ("squad", "gsm8k", "mine", "orphan", "toy"):
        assert cat.tasks_for(name) == [name]
    # A category: its tasks, sorted; by default only those with an expert.
    assert cat.tasks_for("qa") == ["boolq", "squad", "toy"]
    assert cat.tasks_for(" qa ", with_experts=False) == ["boolq", "nq_open", "squad", "toy"]
    assert cat.tasks_for("summarize") == ["xsum"]
    assert cat.tasks_for("classify") == []
    assert cat.tasks_for("classify", with_experts=False) == ["cola", "mine", "sst2", "trec"]
    assert cat.tasks_for("multiple-choice", with_experts=False) == MULTIPLE_CHOICE
    assert cat.tasks_for("math", with_experts=False) == ["gsm8k"]
    # Neither: one line listing the known tasks and categories.
    with pytest.raises(NotFoundError) as err:
        cat.tasks_for("qq")
    message = str(err.value)
    assert "\n" not in message and "'qq'" in message
    assert all(word in message for word in ("orphan", "squad", "mine", "multiple-choice", "summarize"))
    with pytest.raises(NotFoundError):
        cat.tasks_for("")

    assert [cat.category_of(t) for t in ("squad", "toy", "gsm8k", "orphan", "nope")] == [
        "qa", "qa", "math", None, None
    ]  # fmt: skip
    # The tasks table's category wins over the built-in map.
    cat.add_task("sst2", category="sentiment")
    assert cat.category_of("sst2") == "sentiment"
    assert cat.tasks_for("sentiment", with_experts=False) == ["sst2"]
    assert "sst2" not in cat.tasks_for("classify", with_experts=False)
    # What `hub list --tasks qa` runs: experts of any of the category's tasks.
    assert [r.ref for r in cat.list(tasks=cat.tasks_for("qa"))] == ["bq@1", "sq@1", "toy@1"]
    assert cat.count(tasks=["xsum", "orphan"]) == 2 and cat.list(tasks=[]) == []
    with pytest.raises(HubError, match="category 'a b'"):
        cat.add_task("x", category="a b")


def test_training_records_the_task_and_keeps_its_category(cat: Catalog, tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(20)))
    task = load_task(data, name="toy")  # `hub train --task toy --data rows.jsonl` trains task "toy"
    assert (task.name, task.category) == ("toy", None)
    rec = cat.record_task(task, category="qa")
    assert (rec.name, rec.category, rec.data_source) == ("toy", "qa", str(data.resolve()))
    assert rec.sizes == task.sizes and sum(rec.sizes.values()) == 20
    # Trained again without a category: the recorded one stays; a new one replaces it.
    assert cat.record_task(load_task(data, name="toy")).category == "qa"
    assert cat.record_task(load_task(data, name="toy"), category="math").category == "math"
    # The name alone now finds the data, through this catalog (and nowhere else).
    again = load_task("toy", catalog=cat)
    assert (again.name, again.category, again.sizes) == ("toy", "math", task.sizes)
    assert [e.input for e in again.test] == [e.input for e in task.test]
    with pytest.raises(NotFoundError, match="no task of that name"):
        load_task("toy", catalog=False)
    # A built-in or shared-data task gets its category from the built-in map (gsm8k is one of
    # ../shared/data's; a stand-in folder of that name keeps the test independent of the checkout).
    shared_like(tmp_path / "shared-like", "gsm8k")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUB_TASKS_PATH", str(tmp_path / "shared-like"))
        assert cat.record_task(load_task("gsm8k")).category == "math"
    # A data source that went away is a one-line error naming it.
    data.unlink()
    with pytest.raises(NotFoundError, match=r"rows\.jsonl.*not a file or folder"):
        load_task("toy", catalog=cat)


def test_a_0002_catalog_gets_categories_and_value_dtypes(
    tmp_path: Path, hub_home: Path, packed: Callable[..., Path], empty_catalog_url: str
) -> None:
    url, blobs = empty_catalog_url, tmp_path / "old-blobs"
    path = packed("qa", "qa", seed=4, value_dtype="float16")
    write_0001_catalog(url, blobs, path)
    engine = db.make_engine(url)
    migrate.upgrade(engine, "0002")
    with engine.begin() as conn:  # rows as hubtool at 0002 wrote them
        conn.execute(
            text(
                "INSERT INTO tasks (name, description, tags, data_source, sizes, created_at) VALUES "
                "('qa', 'questions', '[\"en\"]', '/data/qa.jsonl', '{\"train\": 8}', '2026-11-27 10:00:00.000000')"
            )
        )
        # A version whose blob is gone: the upgrade must not trip over it.
        conn.execute(
            text(
                "INSERT INTO experts (name, version, kind, task, base_model, nnz, bytes, sha256, blob, created_at) "
                "SELECT 'gone', 1, kind, task, base_model, nnz, bytes, 'ff' || substr(sha256, 3), "
                "'ff/missing.safetensors', created_at FROM experts WHERE name = 'qa'"
            )
        )
        conn.execute(text("INSERT INTO expert_names VALUES ('gone', 1)"))
    assert db.stored_revision(engine) == "0002"

    with Catalog(url, blobs=blobs) as cat:  # opening upgrades; the backfill reads this blob store
        assert db.stored_revision(engine) == db.SCHEMA_HEAD == "0006"
        task = cat.get_task("qa")
        assert (task.category, task.description, task.tags, task.data_source, task.sizes) == (
            None, "questions", ["en"], "/data/qa.jsonl", {"train": 8}
        )  # fmt: skip
        rec = cat.get("qa@best")
        assert rec.value_dtype == "float16" and rec.to_dict()["value_dtype"] == "float16"
        assert rec.metrics == {"qa": {"em": 0.25, "rougeL": 31.5}} and rec.tags == ["demo"]
        assert cat.get("gone").value_dtype is None  # no blob to read: NULL, not an error
        assert cat.category_of("qa") is None
        cat.add_task("qa", category="qa-open", data_source=task.data_source, sizes=task.sizes)
        assert cat.category_of("qa") == "qa-open" and cat.tasks_for("qa-open") == ["qa"]
        new = cat.register(packed("qa", "qa", seed=5))
        assert (new.version, new.value_dtype) == (2, "bfloat16")
    engine.dispose()


def shared_like(root: Path, *names: str) -> None:
    """Small task folders named like ../shared/data's tasks: their categories come from the built-in
    map by name, so the tests do not depend on a shared/ folder beside the checkout."""
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        rows = [{"input": f"{name} {i}", "output": f"{i}"} for i in range(10)]
        (root / name / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hub_tasks_shows_categories_and_the_catalogs_tasks(hub_home: Path, tmp_path: Path) -> None:
    root = tmp_path / "tasks"
    shared_like(root, "gsm8k", "sst2", "squad")
    for folder, meta in (("echo", {"category": "qa", "description": "Say it back"}), ("plain", None)):
        (root / folder).mkdir(parents=True)
        rows = [{"input": f"say {i}", "output": f"{i}"} for i in range(10)]
        (root / folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if meta:
            (root / folder / "task.json").write_text(json.dumps(meta))
    toy = tmp_path / "toy.jsonl"
    toy.write_text("".join(json.dumps({"input": f"n{i}", "output": "a", "options": ["a", "b"]}) + "\n" for i in range(5)))
    with Catalog() as cat:
        cat.add_task("toy", category="math", data_source=str(toy), sizes={"train": 3, "validation": 1, "test": 1})
        cat.add_task("squad")  # an offline task the catalog knows too

    table, listed = hub_many(["tasks"], ["tasks", "--json"])
    env_table, env_json = (
        hub("tasks", HUB_TASKS_PATH=str(root)),
        hub("tasks", "--json", HUB_TASKS_PATH=str(root)),
    )
    lines = ok(env_table).splitlines()
    assert lines[0].split()[:3] == ["task", "category", "kind"] and "catalog" in lines[0].split()
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    categories = {name: cells[1] for name, cells in rows.items()}
    assert categories["echo"] == "qa" and categories["plain"] == "-"
    assert (categories["toy"], rows["toy"][2]) == ("math", "classification")  # kind read from its file
    expected = {"boolq": "qa", "xsum": "summarize", "gsm8k": "math", "sst2": "classify", "squad": "qa"}
    expected |= dict.fromkeys(MULTIPLE_CHOICE, "multiple-choice")
    assert {k: categories[k] for k in expected} == expected
    infos = {t["name"]: t for t in ok_json(env_json)}
    assert infos["echo"]["description"] == "Say it back" and infos["echo"]["registered"] is False
    assert infos["toy"] | {"source": None} == {
        "name": "toy", "source": None, "sizes": {"train": 3, "validation": 1, "test": 1},
        "kind": "classification", "description": "", "category": "math", "registered": True,
    }  # fmt: skip
    assert infos["squad"]["registered"] is True and infos["squad"]["category"] == "qa"
    # Without HUB_TASKS_PATH the catalog's task is still there; the folders are not.
    assert "toy" in {t["name"] for t in ok_json(listed)} and "echo" not in ok(table)

    (root / "plain" / "task.json").write_text('{"category": 3}')
    one_line_error(hub("tasks", HUB_TASKS_PATH=str(root)), "task.json", "category")


COLORS = ["red", "blue", "green", "pink"]
THINGS = [f"thing{i}" for i in range(40)]


@pytest.mark.slow
def test_eval_finds_a_task_trained_from_a_file_by_name(hub_home: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    make_tiny_llama(base)
    save_word_tokenizer(base, ["what", "color", "is", "?", *COLORS, *THINGS])
    work = tmp_path / "work"
    work.mkdir()
    rows = [{"input": f"what color is {t} ?", "output": COLORS[i % 4], "options": COLORS} for i, t in enumerate(THINGS)]
    (work / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # A relative --data from another folder: the catalog must record the absolute path.
    train = subprocess.run(
        [*HUB, "train", "--task", "toy", "--data", "toy.jsonl", "--category", "qa", "--base", str(base),
         "--max-steps", "1", "--batch-size", "4", "--max-length", "32", "--max-val", "4", "--eval-limit", "0",
         "--quiet"],
        cwd=work, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "Registered toy-sparse@1" in ok(train)
    with Catalog() as cat:
        task = cat.get_task("toy")
        assert (task.category, task.data_source) == ("qa", str((work / "toy.jsonl").resolve()))
        assert sum(task.sizes.values()) == len(THINGS) and set(task.sizes) == {"train", "validation", "test"}
        assert cat.get("toy-sparse").task == "toy"
        test_size = task.sizes["test"]

    # No file argument: the name is enough, from any folder.
    scores = ok_json(hub("eval", "toy-sparse", "--task", "toy", "--limit", "4", "--json"))
    assert 0 <= scores["accuracy"] <= 100 and scores["n"] == min(4, test_size) > 0
    shown, by_category, by_both = hub_many(
        ["show", "toy-sparse", "--json"], ["list", "--tasks", "qa", "--json"], ["list", "--tasks", "xsum,qa"]
    )
    assert ok_json(shown)["metrics"]["toy"]["accuracy"] == pytest.approx(scores["accuracy"])
    assert [r["ref"] for r in ok_json(by_category)] == ["toy-sparse@1"] and "toy-sparse@1" in ok(by_both)
    one_line_error(hub("list", "--tasks", "qa,nope"), "'nope'", "categories", "multiple-choice")
    one_line_error(hub("list", "--tasks", ","), "--tasks")

    (work / "toy.jsonl").rename(work / "moved.jsonl")
    one_line_error(hub("eval", "toy-sparse", "--task", "toy", "--limit", "4"), "toy.jsonl", "--data")
    one_line_error(
        hub("train", "--task", "toy", "--data", work / "moved.jsonl", "--category", "no way", "--base", base),
        "--category", "'no way'",
    )  # fmt: skip


@pytest.mark.slow
def test_import_dtype_converts_values_and_show_states_the_dtype(
    hub_home: Path, tmp_path: Path, packed: Callable[..., Path]
) -> None:
    f32 = packed("fp", "qa", seed=1, value_dtype="float32")
    for result in hub_many(
        ["import", f32, "--name", "as-is"],
        ["import", f32, "--name", "half", "--dtype", "fp16"],
        ["import", f32, "--name", "brain", "--dtype", "bfloat16"],
        ["import", f32, "--name", "same", "--dtype", "FP32"],
    ):
        ok(result)
    rows = {r["name"]: r for r in ok_json(hub("list", "--json"))}
    assert {n: r["value_dtype"] for n, r in rows.items()} == {
        "as-is": "float32", "half": "float16", "brain": "bfloat16", "same": "float32"
    }  # fmt: skip
    assert rows["same"]["sha256"] == rows["as-is"]["sha256"] != rows["half"]["sha256"]  # unchanged: as is
    source = unpack(f32)
    with Catalog() as cat:
        for name, dtype in (("half", torch.float16), ("brain", torch.bfloat16)):
            converted = cat.load(name)
            assert converted.value_dtype == str(dtype).removeprefix("torch.")
            for weight, delta in source.deltas.items():
                assert torch.equal(converted.deltas[weight].indices, delta.indices)
                assert converted.deltas[weight].values.dtype == dtype
                assert torch.equal(converted.deltas[weight].values, delta.values.to(dtype))
    shown_json, shown = hub_many(["show", "half", "--json"], ["show", "brain"])
    assert ok_json(shown_json)["value_dtype"] == "float16"
    assert re.search(r"value dtype\s+bfloat16", ok(shown))
    one_line_error(hub("import", f32, "--dtype", "int8"), "--dtype 'int8'", "bf16")

    # A PEFT SHiRA folder keeps its fp32 values, and says so; --dtype converts them.
    from peft import ShiraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    make_tiny_llama(tmp_path / "base")
    shira = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tmp_path / "base"), ShiraConfig(r=1, target_modules=["q_proj"])
    )
    shira.save_pretrained(tmp_path / "shira")
    for result in hub_many(
        ["import", tmp_path / "shira", "--name", "sh", "--task", "qa"],
        ["import", tmp_path / "shira", "--name", "sh-bf16", "--task", "qa", "--dtype", "bf16"],
    ):
        ok(result)
    rows = {r["name"]: r for r in ok_json(hub("list", "--json"))}
    assert (rows["sh"]["value_dtype"], rows["sh-bf16"]["value_dtype"]) == ("float32", "bfloat16")
    assert ok_json(hub("show", "sh", "--json"))["value_dtype"] == "float32"
