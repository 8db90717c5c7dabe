"""Per-example results: evaluate.example_rows on a real tiny Llama, their storage in the catalog on SQLite
and PostgreSQL (migration 0006), the experiment's scorer storing them, and `hub eval` storing them and
comparing two models with `--compare` through the real CLI in a subprocess."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from test_cli import hub, hub_many, ok, ok_json, one_line_error
from test_evaluate import char_tokenizer
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.data.tasks import Example, TaskData
from hubtool.errors import HubError, NotFoundError
from hubtool.evaluate import Prediction, evaluate, example_rows, headline_metric, metrics_of
from hubtool.registry import Catalog, db, migrate
from hubtool.stats import Bootstrap

# ------------------------------------------------------------------------------------ example_rows


def _key(text_: str) -> str:
    return hashlib.sha256(text_.encode()).hexdigest()[:12]


def test_example_rows_by_hand():
    mc = Example("Pick a colour", "blue", options=["red", "blue", "green"])
    free = Example("Who sat?", "cat sat", answers=["a cat sat down"])
    rows = example_rows([
        Prediction(mc, "red", [-1.0, -2.5, -4.0]),  # wrong by sum; right per character (blue: -2.5/4 > -1/3? no)
        Prediction(free, "The cat sat"),             # exact after SQuAD normalisation (articles dropped)
        Prediction(mc, "blue", [-3.0, -0.5, -9.0]),
    ])  # fmt: skip
    assert [r["idx"] for r in rows] == [0, 1, 2]
    assert [r["key"] for r in rows] == [_key("Pick a colour"), _key("Who sat?"), _key("Pick a colour")]
    assert [r["text"] for r in rows] == ["red", "The cat sat", "blue"]
    assert [r["gold_logprob"] for r in rows] == [-2.5, None, -0.5]
    assert rows[0]["metrics"] == {"rougeL": 0.0, "exact_match": 0.0, "accuracy": 0.0, "accuracy_norm": 0.0}
    assert rows[2]["metrics"] == {"rougeL": 100.0, "exact_match": 100.0, "accuracy": 100.0, "accuracy_norm": 100.0}
    # Free-form: no accuracy; rougeL against the best reference ("cat sat": 2 of 3 tokens -> F = 0.8).
    assert set(rows[1]["metrics"]) == {"rougeL", "exact_match"}
    assert rows[1]["metrics"]["exact_match"] == 100.0
    assert rows[1]["metrics"]["rougeL"] == pytest.approx(80.0) == rows[1]["value"]
    assert [rows[0]["value"], rows[2]["value"]] == [0.0, 100.0]  # accuracy is the headline with options
    assert headline_metric(rows) == "rougeL" and headline_metric([rows[0], rows[2]]) == "accuracy"


def test_example_rows_average_to_score_on_a_real_model():
    torch.manual_seed(0)
    model, tok = make_tiny_llama(vocab=128, hidden=32, heads=2, kv_heads=1), char_tokenizer()
    examples = [Example(f"Q{i}: colour?", ["red", "blue", "gold"][i % 3], options=["red", "blue", "gold"])
                for i in range(7)]  # fmt: skip
    examples += [Example(f"Say {w}", w) for w in ("hi", "yo", "ok")]
    data = TaskData("mixed", train=[], validation=[], test=examples)
    predictions: list[Prediction] = []
    metrics = evaluate(model, tok, data, max_new_tokens=3, predictions=predictions)
    rows = example_rows(predictions)
    assert len(rows) == 10 and [r["key"] for r in rows] == [_key(e.input) for e in examples]
    for metric in ("rougeL", "exact_match", "accuracy", "accuracy_norm"):
        having = [r["metrics"][metric] for r in rows if metric in r["metrics"]]
        assert sum(having) / len(having) == pytest.approx(metrics[metric]) == pytest.approx(metrics_of(predictions)[metric])
    assert sum(r["metrics"].get("accuracy", 0) > 0 for r in rows) not in (0, 7)  # a mix of right and wrong
    for r, p in zip(rows, predictions):
        if p.option_logprobs is not None:  # the gold option's summed log-prob, as scored
            assert r["gold_logprob"] == p.option_logprobs[p.example.options.index(p.example.output)] < 0
            assert r["value"] == r["metrics"]["accuracy"]
        else:
            assert r["gold_logprob"] is None and r["value"] == r["metrics"]["rougeL"]


# ------------------------------------------------------------------------------------ the catalog


@pytest.fixture
def cat(hub_home: Path, catalog_url: str):
    with Catalog(catalog_url) as catalog:
        yield catalog


def _rows(values: list[float], *, offset: int = 0, options: bool = True) -> list[dict]:
    rows = []
    for i, v in enumerate(values):
        metrics = {"rougeL": v, "exact_match": v} | ({"accuracy": v, "accuracy_norm": 100.0 - v} if options else {})
        rows.append({"idx": i + offset, "key": _key(f"example {i + offset}"), "value": v, "metrics": metrics,
                     "gold_logprob": -1.5 - i if options else None, "text": f"answer {i} ü"})  # fmt: skip
    return rows


def test_examples_are_stored_replaced_and_read_per_subject_task_and_split(cat, packed):
    rec = cat.register(packed("qa", "qa", seed=1))
    other = cat.register(packed("qa", "qa", seed=2))
    assert cat.examples(rec.ref, "qa") == [] and cat.evaluations(rec.ref) == []

    assert cat.set_examples(rec.ref, "qa", _rows([100.0, 0.0, 100.0]), settings={"limit": 3}) == 3
    cat.set_examples(None, "qa", _rows([0.0, 0.0, 100.0]), base_model="tiny-llama", base_revision="r1")
    cat.set_examples(rec.ref, "qa", _rows([55.5, 12.25], options=False), split="validation")
    cat.set_examples(rec.ref, "summ", _rows([10.0], options=False))

    stored = cat.examples("qa@1", "qa")
    assert stored == _rows([100.0, 0.0, 100.0])  # every field back as given, in idx order
    assert cat.examples(None, "qa", base_model="tiny-llama")[2]["value"] == 100.0
    assert [r["value"] for r in cat.examples(rec.ref, "qa", split="validation")] == [55.5, 12.25]
    assert cat.examples(other.ref, "qa") == [] and cat.examples(None, "qa", base_model="other-base") == []
    evaluations = cat.evaluations(rec.ref)
    assert [(e["task"], e["split"], e["metric"], e["n"]) for e in evaluations] == [
        ("qa", "test", "accuracy", 3), ("qa", "validation", "rougeL", 2), ("summ", "test", "rougeL", 1)
    ]  # fmt: skip
    assert evaluations[0]["settings"] == {"limit": 3} and evaluations[0]["created_at"] is not None
    assert [e["task"] for e in cat.evaluations(rec.ref, split="validation")] == ["qa"]
    base_eval = cat.evaluations(None, base_model="tiny-llama")
    assert [(e["task"], e["base_revision"]) for e in base_eval] == [("qa", "r1")]

    # Evaluating again replaces the whole evaluation: rows not measured again are gone too.
    cat.set_examples(rec.ref, "qa", _rows([0.0, 100.0], offset=5))
    assert [r["idx"] for r in cat.examples(rec.ref, "qa")] == [5, 6]
    assert [e["n"] for e in cat.evaluations(rec.ref, split="test")] == [2, 1]
    with cat.engine.connect() as conn:
        counts = conn.execute(text("SELECT count(*) FROM evaluations")).scalar(), conn.execute(
            text("SELECT count(*) FROM eval_examples")).scalar()  # fmt: skip
    assert counts == (4, 2 + 3 + 2 + 1)

    # An expert's results go with it; the base model's stay.
    cat.remove(rec.ref)
    with cat.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM eval_examples")).scalar() == 3
    assert len(cat.examples(None, "qa", base_model="tiny-llama")) == 3


def test_bad_rows_are_refused_whole_and_change_nothing(cat, packed):
    rec = cat.register(packed("qa", "qa"))
    cat.set_examples(rec.ref, "qa", _rows([100.0, 0.0]))
    bad_value = _rows([100.0, 0.0, 100.0])
    bad_value[2]["value"] = float("nan")
    duplicate = _rows([100.0, 0.0])
    duplicate[1]["idx"] = 0
    bad_gold = _rows([100.0])
    bad_gold[0]["gold_logprob"] = "low"
    for rows, match in (
        (bad_value, r"rows\[2\]\.value: expected a finite number"),
        (duplicate, r"rows\[1\]\.idx 0 appears twice"),
        (bad_gold, r"rows\[0\]\.gold_logprob: expected a finite number"),
        ([{**_rows([1.0])[0], "idx": -1}], r"rows\[0\]\.idx: expected the example's index"),
        ([{**_rows([1.0])[0], "text": None}], r"rows\[0\]\.text: expected the prediction's text"),
        ([], "expected at least one example row"),
    ):
        with pytest.raises(HubError, match=match):
            cat.set_examples(rec.ref, "qa", rows)
    with pytest.raises(HubError, match="settings: expected JSON values"):
        cat.set_examples(rec.ref, "qa", _rows([1.0]), settings={"limit": float("inf")})
    with pytest.raises(HubError, match="expected an expert ref or"):
        cat.set_examples(rec.ref, "qa", _rows([1.0]), base_model="tiny-llama")
    with pytest.raises(HubError, match="expected an expert ref or"):
        cat.examples(None, "qa")
    with pytest.raises(NotFoundError):
        cat.set_examples("nope@1", "qa", _rows([1.0]))
    assert [r["value"] for r in cat.examples(rec.ref, "qa")] == [100.0, 0.0]  # the old evaluation stands
    # The schema itself holds one subject per evaluation and one per (subject, task, split).
    insert = "INSERT INTO evaluations (expert_id, base_model, task, split, metric, n, created_at) VALUES "
    for values in (
        "(NULL, NULL, 't', 'test', 'rougeL', 1, CURRENT_TIMESTAMP)",  # no subject
        f"({rec.id}, 'tiny-llama', 't', 'test', 'rougeL', 1, CURRENT_TIMESTAMP)",  # two subjects
        f"({rec.id}, NULL, 'qa', 'test', 'rougeL', 1, CURRENT_TIMESTAMP)",  # (expert, qa, test) again
    ):
        with pytest.raises(IntegrityError), cat.engine.begin() as conn:
            conn.execute(text(insert + values))


def test_a_0005_catalog_upgrades_to_0006_with_its_experts(tmp_path, packed, empty_catalog_url):
    engine = db.make_engine(empty_catalog_url)
    migrate.upgrade(engine, "0005")
    engine.dispose()
    with Catalog(empty_catalog_url, blobs=tmp_path / "blobs") as cat:
        rec = cat.register(packed("qa", "qa"))
    engine = db.make_engine(empty_catalog_url)
    with engine.begin() as conn:  # back to 0005: as an older hubtool left it, with an expert in it
        conn.execute(text("DROP TABLE eval_examples"))
        conn.execute(text("DROP TABLE evaluations"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    with Catalog(empty_catalog_url, blobs=tmp_path / "blobs") as cat:
        assert db.stored_revision(engine) == "0006"
        cat.set_examples(rec.ref, "qa", _rows([100.0]))
        assert cat.examples("qa", "qa")[0]["metrics"]["accuracy"] == 100.0
    engine.dispose()


# ------------------------------------------------------------------------------------ the experiment's scorer


def test_the_experiments_scorer_stores_per_example_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("HUB_CATALOG", raising=False)
    from hubtool.experiment.presets import get_preset
    from hubtool.experiment.runner import Experiment, Scorer
    from hubtool.models import base_id

    exp = Experiment.open(get_preset("smoke"))
    task = exp.tasks[0]
    job = exp.planner().eval_job(None, task)
    metrics = Scorer(exp).evaluate(job)
    rows = exp.catalog.examples(None, task.name, base_model=base_id(exp.base))
    assert len(rows) == min(exp.preset.eval_limit, len(task.data.test))
    headline = "accuracy" if "accuracy" in metrics else "rougeL"
    assert sum(r["value"] for r in rows) / len(rows) == pytest.approx(metrics[headline])
    (evaluation,) = exp.catalog.evaluations(None, base_model=base_id(exp.base))
    assert evaluation["settings"] == json.loads(json.dumps(job.settings))


# ------------------------------------------------------------------------------------ hub eval, hub eval --compare

COLORS = ["red", "blue", "green", "pink"]
THINGS = [f"thing{i}" for i in range(40)]


def _expert(base: Path, path: Path, name: str, seed: int) -> Path:
    """A packed sparse expert on the tiny Llama at `base` (q_proj [64, 64] and v_proj [32, 64] of layer 1 and
    the LM head [256, 64], 10% of entries each), with fingerprints so it applies to this base only."""
    from hubtool.format import Expert, SparseDelta, pack
    from hubtool.format.fingerprint import fingerprint

    params = dict(make_tiny_llama().named_parameters())
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for weight in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight", "lm_head.weight"):
        shape = tuple(params[weight].shape)
        n = shape[0] * shape[1]
        positions = torch.randperm(n, generator=gen)[: n // 10].sort().values
        deltas[weight] = SparseDelta(shape, positions, 0.5 * torch.randn(positions.numel(), generator=gen),
                                     fingerprint=fingerprint(params[weight]))  # fmt: skip
    pack(Expert(name=name, task="colors", kind="sparse", base_model=str(base), deltas=deltas, keep_ratio=0.1), path)
    return path


@pytest.mark.slow
def test_hub_eval_stores_rows_and_compare_prints_paired_intervals(hub_home: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    make_tiny_llama(base)
    save_word_tokenizer(base, ["what", "color", "is", "?", *COLORS, *THINGS])
    data = tmp_path / "colors"  # a task folder: 24 test examples, as many as it says
    rows = [{"input": f"what color is {t} ?", "output": COLORS[i % 4], "options": COLORS} for i, t in enumerate(THINGS)]
    data.mkdir()
    for split, part in (("train", rows[24:36]), ("validation", rows[36:]), ("test", rows[:24])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    with Catalog() as cat:  # registered in-process: `hub import` is tested elsewhere, and costs a torch start-up
        for name, seed in (("cx", 1), ("cy", 2)):
            cat.register(_expert(base, tmp_path / f"{name}.safetensors", name, seed), name=name, task="colors")
    # Three evaluations at once (about 8 s of CPU each, mostly importing torch; the catalog takes concurrent writers).
    who = {"base": ["--base", base], "cx": ["cx"], "cy": ["cy"]}
    scores = dict(zip(who, map(ok_json, hub_many(*(["eval", *a, "--task", data, "--limit", "24", "--json"]
                                                   for a in who.values())))))  # fmt: skip

    with Catalog() as cat:  # every example stored, averaging to the printed score
        stored = {"cx": cat.examples("cx", "colors"), "cy": cat.examples("cy", "colors"),
                  "base": cat.examples(None, "colors", base_model=str(base.resolve()))}  # fmt: skip
        assert cat.evaluations("cx")[0]["settings"] == {"split": "test", "limit": 24, "max_new_tokens": 64, "batch_size": 8,
                                                       "max_prompt_tokens": None}
    for who, got in stored.items():
        assert [r["idx"] for r in got] == list(range(24)) and got[3]["key"] == _key(rows[3]["input"])
        assert sum(r["value"] for r in got) / 24 == pytest.approx(scores[who]["accuracy"])
        assert all(r["text"] in COLORS and r["gold_logprob"] < 0 for r in got)
    assert len({tuple(r["value"] for r in got) for got in stored.values()}) > 1  # the models differ somewhere

    report = ok_json(hub("eval", "--compare", "cx,cy", "--json", "--draws", "500", "--seed", "3"))
    assert (report["a"], report["b"], report["base"], report["draws"]) == ("cx@1", "cy@1", str(base.resolve()), 500)
    assert report["convention"].startswith("difference = A - B; retention = 100 * sum A / sum B")
    (task,) = report["tasks"]
    assert (task["task"], task["metric"], task["n"]) == ("colors", "accuracy", 24)
    # The same numbers as the bootstrap run directly on the stored rows.
    outcomes = {k: {"colors": [r["value"] for r in v]} for k, v in stored.items()}
    boot = Bootstrap(outcomes, draws=500, seed=3)
    expected = {"a": boot.mean("cx"), "b": boot.mean("cy"), "base": boot.mean("base"),
                "difference": boot.diff("cx", "cy"), "retention": boot.retention("cx", "cy"),
                "gain": boot.gain("cx", "cy", "base")}  # fmt: skip
    for field, est in expected.items():
        assert task[field] == pytest.approx(est.as_dict(), nan_ok=True), field
    assert task["a"]["value"] == pytest.approx(scores["cx"]["accuracy"])
    assert report["overall"]["difference"] == task["difference"]  # one task: overall is that task

    # The table: the convention in the header, every estimate as "value [low, high]".
    table = ok(hub("eval", "--compare", "cx,cy", "--task", "colors", "--draws", "500", "--seed", "3"))
    assert "A = cx@1, B = cy@1" in table and "A - B" in table and "retention A/B %" in table
    line = next(ln for ln in table.splitlines() if ln.strip().startswith("colors"))
    assert f"{task['difference']['value']:.1f} [{task['difference']['low']:.1f}, {task['difference']['high']:.1f}]" in line

    # 'base' is the other's base model: no gain then (it would be 0 by definition).
    vs_base = ok_json(hub("eval", "--compare", "cx,base", "--json", "--draws", "200"))
    assert vs_base["b"] == f"base model {base.resolve()}" and vs_base["tasks"][0]["gain"] is None
    assert vs_base["tasks"][0]["difference"]["value"] == pytest.approx(scores["cx"]["accuracy"] - scores["base"]["accuracy"])
    if not math.isclose(scores["base"]["accuracy"], 0.0):
        want = 100 * scores["cx"]["accuracy"] / scores["base"]["accuracy"]
        assert vs_base["tasks"][0]["retention"]["value"] == pytest.approx(want)

    # Bad input: one line naming the option or the task (torch-free commands, run side by side).
    bad = {
        ("--compare", "A,B"): ["eval", "--compare", "cx"],
        ("--task nope", "cx@1"): ["eval", "--compare", "cx,cy", "--task", "colors,nope"],
        ("--compare base,base",): ["eval", "--compare", "base,base"],
        ("--compare",): ["eval", "cx", "--compare", "cx,cy"],
        ("--draws",): ["eval", "--compare", "cx,cy", "--draws", "0"],
        ("--task",): ["eval", "cx"],
    }
    for words, result in zip(bad, hub_many(*bad.values())):
        one_line_error(result, *words)
    # Scored on other examples (as `--limit 20` would store them): not paired, so refused, naming the task.
    with Catalog() as cat:
        cat.set_examples("cy", "colors", stored["cy"][:20])
    one_line_error(hub("eval", "--compare", "cx,cy"), "task 'colors'", "different examples")
