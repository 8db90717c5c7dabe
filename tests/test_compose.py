"""hub compose end to end on a tiny random Llama: choosing, streaming, outputs, lineage, recipes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.delta import BlockSparseDelta, Expert, FullDelta, LoraDelta, SparseDelta, TileGrid
from hubtool.errors import HubError, NotFoundError
from hubtool.format import fingerprint, pack
from hubtool.merge.compose import compose, recipe_from_card
from hubtool.registry import Catalog

TARGETS = ("q_proj", "k_proj", "v_proj")


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base"
    model = make_tiny_llama(path)
    save_word_tokenizer(path, ["what", "is", "the", "answer", "yes", "no"])
    return path, model


def _weights(model):
    return {n: p.detach() for n, p in model.named_parameters() if n.endswith(".weight") and any(t in n for t in TARGETS)}


def make_expert(model, base_path, name, task, *, kind="sparse", seed=0, keep=0.1, layers=None) -> Expert:
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for wname, w in _weights(model).items():
        if layers is not None and not any(f"layers.{i}." in wname for i in layers):
            continue
        shape, fp = tuple(w.shape), fingerprint(w)
        n = shape[0] * shape[1]
        if kind == "sparse":
            idx = torch.randperm(n, generator=gen)[: int(keep * n)].sort().values
            deltas[wname] = SparseDelta(shape, idx, torch.randn(idx.numel(), generator=gen) * 0.1, fp)
        elif kind == "block-sparse":
            grid = TileGrid(shape, 8)
            tiles = torch.randperm(grid.cells, generator=gen)[:3].sort().values
            deltas[wname] = BlockSparseDelta(shape, 8, tiles, torch.randn(3, 8, 8, generator=gen) * 0.1, fp)
        elif kind == "lora":
            deltas[wname] = LoraDelta(shape, torch.randn(2, shape[1], generator=gen) * 0.1,
                                      torch.randn(shape[0], 2, generator=gen) * 0.1, 2.0, fp)
        else:
            deltas[wname] = FullDelta(shape, torch.randn(shape, generator=gen) * 0.01, fp)
    return Expert(name=name, task=task, kind=kind, base_model=str(base_path.resolve()), deltas=deltas,
                  keep_ratio=keep if kind == "sparse" else None, value_dtype="float32", targets="qkv")


@pytest.fixture
def cat(hub_home, tmp_path):
    return Catalog(blobs=hub_home / "blobs")


def register(cat, tmp_path, expert, **kw):
    path = tmp_path / f"{expert.name}-{len(list(tmp_path.glob('*.safetensors')))}.safetensors"
    pack(expert, path)
    return cat.register(path, **kw)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_compose_out_writes_a_loadable_model_equal_to_the_in_memory_merge(base, cat, tmp_path):
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "qa-sparse", "squad", seed=1), metrics={"rougeL": 30})
    register(cat, tmp_path, make_expert(model, base_path, "sum-sparse", "xsum", seed=2), metrics={"rougeL": 20})
    out = tmp_path / "merged"
    result = compose(tasks="qa,summarize", out=out, catalog=cat)
    assert result.out == out.absolute()
    assert {c.task for c in result.plan.choices} == {"squad", "xsum"}  # categories qa and summarize
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "README.md", "hubtool_recipe.yml", "tokenizer.json"} <= files
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) <= files

    # streamed result == the merge done in memory from the library pieces
    from hubtool.merge.execute import merged_deltas

    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for name, delta in merged_deltas(result.plan):
        delta.add_to_(expected[name])
    got = _state(out)
    assert set(got) >= {k for k in expected if not k.endswith("lm_head.weight") or k in got}
    for name, t in got.items():
        torch.testing.assert_close(t, expected[name].to(t.dtype), rtol=0, atol=0)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("what is the answer", return_tensors="pt").input_ids
    gen = loaded.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3

    card = (out / "README.md").read_text()
    assert "base_model_relation: merge" in card and "library_name: transformers" in card
    for c in result.plan.choices:
        assert c.ref in card and c.record.sha256 in card


def test_recipe_round_trip_reproduces_the_output(base, cat, tmp_path):
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "a", "squad", seed=1))
    register(cat, tmp_path, make_expert(model, base_path, "b", "xsum", seed=2))
    first = compose(tasks="squad,xsum", method="ties", density=0.3, lam=0.8, out=tmp_path / "m1", catalog=cat)
    recipe = recipe_from_card(first.out)
    assert recipe.method == "ties" and recipe.density == 0.3 and recipe.lam == 0.8
    assert [e.ref for e in recipe.experts] == [c.ref for c in first.plan.choices]
    # a newer expert for squad must not change what the recipe means: it pins versions and sha256
    register(cat, tmp_path, make_expert(model, base_path, "a", "squad", seed=9))
    second = compose(config=first.out / "hubtool_recipe.yml", out=tmp_path / "m2", catalog=cat)
    a, b = _state(first.out), _state(second.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert recipe_from_card(second.out).to_dict() == recipe.to_dict()


def test_as_expert_registers_a_merged_expert_with_lineage(base, cat, tmp_path):
    base_path, model = base
    a = register(cat, tmp_path, make_expert(model, base_path, "a", "squad", seed=1))
    b = register(cat, tmp_path, make_expert(model, base_path, "b", "xsum", seed=2))
    result = compose(experts=f"{a.ref},{b.ref}", weights=[1.0, 0.5], as_expert="qa-sum", catalog=cat)
    rec = result.record
    assert rec.kind == "merged" and set(rec.tasks) == {"squad", "xsum"}
    lineage = cat.lineage(rec.ref)
    assert {(p["ref"], p["weight"]) for p in lineage["parents"]} == {(a.ref, 1.0), (b.ref, 0.5)}
    assert all(p["role"] == "merge:overlap-mean" for p in lineage["parents"])
    assert {c["ref"] for c in cat.lineage(a.ref)["children"]} == {rec.ref}
    merged = cat.load(rec.ref)
    # overlap-mean of sparse experts is sparse on the union of their positions
    ea, eb = cat.load(a.ref), cat.load(b.ref)
    for name, d in merged.deltas.items():
        assert d.kind == "sparse"
        union = set(ea.deltas[name].indices.tolist()) | set(eb.deltas[name].indices.tolist())
        assert set(d.indices.tolist()) <= union
    # it can be composed again, and applied
    again = compose(experts=rec.ref, out=tmp_path / "again", catalog=cat)
    assert again.out.is_dir()


def test_mixed_kinds_merge(base, cat, tmp_path):
    base_path, model = base
    refs = [register(cat, tmp_path, make_expert(model, base_path, k, f"t{i}", kind=k, seed=i)).ref
            for i, k in enumerate(["sparse", "block-sparse", "lora", "full"])]
    result = compose(experts=refs, method="mean", as_expert="mixed", catalog=cat)
    merged = cat.load(result.record.ref)
    experts = [cat.load(r) for r in refs]
    for name, d in merged.deltas.items():
        expected = sum(e.deltas[name].to_dense() for e in experts) / 4
        torch.testing.assert_close(d.to_dense(), expected, rtol=1e-5, atol=1e-6)


def test_base_mismatch_is_refused_before_any_work(base, cat, tmp_path):
    base_path, model = base
    other = make_tiny_llama(tmp_path / "other", seed=5)
    register(cat, tmp_path, make_expert(model, base_path, "a", "squad"))
    register(cat, tmp_path, make_expert(other, tmp_path / "other", "b", "xsum"))
    with pytest.raises(HubError, match="do not share one base model"):
        compose(tasks="squad,xsum", out=tmp_path / "m", catalog=cat)
    assert not (tmp_path / "m").exists()


def test_no_expert_for_a_task_lists_the_tasks_that_have_one(base, cat, tmp_path):
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "a", "squad"))
    with pytest.raises(NotFoundError, match="tasks with experts: squad"):
        compose(tasks="squad,xsum", out=tmp_path / "m", catalog=cat)
    with pytest.raises(NotFoundError, match="summarize"):
        compose(tasks="summarize", out=tmp_path / "m", catalog=cat)


def test_best_and_latest_pick(base, cat, tmp_path):
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "qa", "squad", seed=1), metrics={"rougeL": 40})
    register(cat, tmp_path, make_expert(model, base_path, "qa", "squad", seed=2), metrics={"rougeL": 10})
    best = compose(tasks="squad", dry_run=True, catalog=cat).plan.choices[0]
    latest = compose(tasks="squad", pick="latest", dry_run=True, catalog=cat).plan.choices[0]
    assert (best.ref, latest.ref) == ("qa@1", "qa@2")
    assert "rougeL" in best.reason


def test_dry_run_overlap_counts_entries_per_number_of_experts(base, cat, tmp_path):
    base_path, model = base
    e1 = make_expert(model, base_path, "a", "squad", layers=[0])
    e2 = make_expert(model, base_path, "b", "xsum", layers=[0])
    name = "model.layers.0.self_attn.q_proj.weight"
    shape = e1.deltas[name].shape
    e1.deltas[name] = SparseDelta(shape, torch.arange(0, 10), torch.ones(10), e1.deltas[name].fingerprint)
    e2.deltas[name] = SparseDelta(shape, torch.arange(5, 25), torch.ones(20), e2.deltas[name].fingerprint)
    register(cat, tmp_path, e1)
    register(cat, tmp_path, e2)
    result = compose(tasks="squad,xsum", dry_run=True, catalog=cat)
    assert result.overlap[name] == [20, 5]  # 5 shared, 5 + 15 alone
    assert result.output_bytes > 0
    assert not any(p.name.startswith("m") for p in tmp_path.iterdir() if p.is_dir() and p.name != "hub")


def test_bad_input_fails_with_one_line_before_work(base, cat, tmp_path):
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "a", "squad"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(HubError, match="already exists"):
        compose(tasks="squad", out=tmp_path / "full", catalog=cat)
    with pytest.raises(HubError, match="merge_method"):
        compose(tasks="squad", method="nope", out=tmp_path / "m", catalog=cat)
    with pytest.raises(HubError, match="--as-expert"):
        compose(tasks="squad", as_expert="../evil", catalog=cat)
    with pytest.raises(HubError, match="takes no density"):
        compose(tasks="squad", density=0.2, out=tmp_path / "m", catalog=cat)
    with pytest.raises(HubError, match="exactly one"):
        compose(tasks="squad", catalog=cat)
    bad = tmp_path / "bad.yml"
    bad.write_text("merge_method: ties\nparameters: {density: 2}\nselect: {tasks: [squad]}\n")
    with pytest.raises(HubError, match="density"):
        compose(config=bad, out=tmp_path / "m", catalog=cat)


def test_cli_compose_dry_run_and_out(base, hub_home, tmp_path):
    base_path, model = base
    cat = Catalog()
    register(cat, tmp_path, make_expert(model, base_path, "a", "squad", seed=1))
    register(cat, tmp_path, make_expert(model, base_path, "b", "xsum", seed=2))
    hub = [sys.executable, "-m", "hubtool"]
    dry = subprocess.run([*hub, "compose", "--tasks", "qa,summarize", "--dry-run"], capture_output=True, text=True, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "k=2" in dry.stdout and "Nothing was written" in dry.stdout
    run = subprocess.run([*hub, "compose", "--tasks", "qa,summarize", "--out", str(tmp_path / "m")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    bad = subprocess.run([*hub, "compose", "--tasks", "nope", "--out", str(tmp_path / "m2")], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr


def test_weights_summing_to_zero_are_refused_where_the_method_divides_by_them():
    """issue 15 §8: --weights 1,-1 under mean, magnitude-prune and dare-linear --normalize raised
    ZeroDivisionError; where the method does not divide by the sum, the same weights are fine."""
    from hubtool.merge.compose import build_recipe

    for method, normalize in (("mean", None), ("overlap-mean", None), ("magnitude-prune", None),
                              ("dare-linear", True)):
        with pytest.raises(HubError, match="weights sum to 0"):
            build_recipe(experts=["a", "b"], method=method, weights=[1.0, -1.0], normalize=normalize)
    for method, normalize in (("task-arithmetic", None), ("dare-linear", None), ("magnitude-prune", False)):
        build_recipe(experts=["a", "b"], method=method, weights=[1.0, -1.0], normalize=normalize)
