"""Catalog-aware masks (`hub train --avoid`): the ranking rule, the coverage counts read from real packed
files (tiles, GPT-2 Conv1D layout, LoRA weights skipped), masks chosen at the adapter, and real training
runs on a tiny random Llama through the library and the `hub` CLI in a subprocess."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import write_sparse_expert
from test_cli import hub, ok, ok_json, one_line_error
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.delta import BlockSparseDelta, Expert, LoraDelta, SparseDelta, TileGrid
from hubtool.format import pack
from hubtool.sparse import AdapterConfig
from hubtool.sparse.adapters import Adapter
from hubtool.sparse.masks import Coverage, avoiding_top_k, dense_mask, top_k

COLORS = ["red", "blue", "green", "pink"]
SIZES = ["small", "big"]
THINGS = [f"thing{i}" for i in range(60)]
# 3 steps, a mask re-selected at each (the first one by |grad|, then by |delta ⊙ grad|), keep 0.1
TRAIN = {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "max_length": 32, "eval_limit": 4, "quiet": True,
         "keep_ratio": 0.1, "mask_interval": 1}


def cli_args(settings: dict) -> list[str]:
    return [a for k, v in settings.items() if k != "quiet" for a in (f"--{k.replace('_', '-')}", str(v))] + ["--quiet"]


# --- the ranking rule ---------------------------------------------------------------------------------


def test_avoiding_top_k_follows_the_formula_and_inf_ranks_every_free_entry_first() -> None:
    scores = torch.tensor([0.0, 5.0, 1.0, 4.0, 0.5, 3.0])
    covered = torch.tensor([0, 2, 0, 1, 0, 0], dtype=torch.uint8)
    assert torch.equal(avoiding_top_k(scores, covered, 3, 0.0), top_k(scores, 3))  # [1, 3, 5]
    # beta 1: [0, 5/3, 1, 4/2, 0.5, 3] -> 3, 2, 5/3
    assert avoiding_top_k(scores, covered, 3, 1.0).tolist() == [1, 3, 5]
    # beta 4: [0, 5/9, 1, 4/5, 0.5, 3] -> 3, 1, 0.8
    assert avoiding_top_k(scores, covered, 3, 4.0).tolist() == [2, 3, 5]
    # inf: a free entry of score 0 outranks a covered one of score 5 (no reliance on 5 / inf == 0 == 0)
    assert avoiding_top_k(scores, covered, 4, math.inf).tolist() == [0, 2, 4, 5]
    # fewer free entries than k: the covered ones follow by score / count (4 / 1 before 5 / 2)
    assert avoiding_top_k(scores, covered, 5, math.inf).tolist() == [0, 2, 3, 4, 5]
    assert avoiding_top_k(scores, covered, 6, math.inf).tolist() == list(range(6))

    gen = torch.Generator().manual_seed(0)
    s, c = torch.rand(40, 30, generator=gen), torch.randint(0, 4, (40, 30), generator=gen)
    for beta in (0.0, 0.3, 1.0, 7.0):
        direct = torch.topk((s / (1 + beta * c.float())).reshape(-1), 100).indices.sort().values
        assert torch.equal(avoiding_top_k(s, c, 100, beta), direct)
    got = avoiding_top_k(s, c, 100, math.inf)
    assert int((c.reshape(-1)[got] > 0).sum()) == 0 and got.numel() == 100


# --- coverage counts from packed files ----------------------------------------------------------------


def test_coverage_counts_positions_tiles_and_conv1d_layout_and_skips_lora(tmp_path: Path) -> None:
    """Two experts on a Linear [8, 12] and a GPT-2 Conv1D (stored [12, 8], [out, in] = [8, 12]): the
    counts equal the sum of their dense masks, per entry and per 4 x 4 tile (an expert counts once per
    tile it touches at all); the second expert's LoRA weight is listed as dense, not counted."""
    from transformers.pytorch_utils import Conv1D

    from hubtool.sparse.layers import SparseLayer

    gen = torch.Generator().manual_seed(3)
    lin = SparseLayer(torch.nn.Linear(12, 8, bias=False))
    conv = SparseLayer(Conv1D(8, 12))  # nf = 8 outputs, nx = 12 inputs: weight [12, 8]
    assert conv.transposed and conv.shape == (8, 12)

    def positions(n: int, k: int) -> torch.Tensor:
        return torch.randperm(n, generator=gen)[:k].sort().values

    a_lin, a_conv, b_lin = positions(96, 20), positions(96, 30), positions(96, 25)
    one = tmp_path / "one.safetensors"
    pack(Expert("one", "t1", "sparse", "tiny", {
        "lin.weight": SparseDelta((8, 12), a_lin, torch.ones(20)),
        "conv.weight": SparseDelta((12, 8), a_conv, torch.ones(30)),  # stored layout [in, out]
    }, keep_ratio=0.25), one)
    two = tmp_path / "two.safetensors"
    tiles = torch.tensor([0, 5])  # tiles (0, 0) and (1, 2) of lin's 2 x 3 grid at B = 4
    pack(Expert("two", "t2", "merged", "tiny", {
        "lin.weight": SparseDelta((8, 12), b_lin, torch.ones(25)),
        "conv.weight": LoraDelta((12, 8), torch.randn(2, 8, generator=gen), torch.randn(12, 2, generator=gen), 1.0),
    }), two)
    three = tmp_path / "three.safetensors"
    pack(Expert("three", "t3", "block-sparse", "tiny", {
        "lin.weight": BlockSparseDelta((8, 12), 4, tiles, torch.ones(2, 4, 4)),
    }, keep_ratio=0.3), three)
    sources = [("one@1", one), ("two@1", two), ("three@1", three)]

    def mask(pos: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        return dense_mask(pos, shape, None).to(torch.int64)

    lin_three = dense_mask(tiles, (8, 12), 4).to(torch.int64)
    want_lin = mask(a_lin, (8, 12)) + mask(b_lin, (8, 12)) + lin_three
    want_conv = mask(a_conv, (12, 8)).t()  # expert one's stored mask, in the layer's [out, in]

    cov = Coverage(sources, beta=1.0)
    cov.build({"lin": lin, "conv": conv}, None)
    assert cov.counts["lin"].dtype == torch.uint8 and cov.counts["lin"].shape == (8, 12)
    assert torch.equal(cov.counts["lin"].to(torch.int64), want_lin)
    assert torch.equal(cov.counts["conv"].to(torch.int64), want_conv)
    assert cov.dense == {"two@1": ["conv.weight"]}
    covered = int((want_lin > 0).sum() + (want_conv > 0).sum())
    assert cov.covered_share() == pytest.approx(covered / 192)

    tiled = Coverage(sources, beta=1.0)
    tiled.build({"lin": lin, "conv": conv}, 4)
    grid = TileGrid((8, 12), 4)  # 2 x 3 tiles
    for name, masks in (("lin", [mask(a_lin, (8, 12)), mask(b_lin, (8, 12)), lin_three]), ("conv", [want_conv])):
        want = sum((grid.to_tiles(m).sum(dim=(1, 2)) > 0).to(torch.int64) for m in masks)
        assert torch.equal(tiled.counts[name].to(torch.int64), want), name


def test_coverage_refuses_an_expert_of_another_shape(tmp_path: Path) -> None:
    from hubtool.errors import HubError
    from hubtool.sparse.layers import SparseLayer

    path = tmp_path / "odd.safetensors"
    pack(Expert("odd", "t", "sparse", "tiny", {"lin.weight": SparseDelta((8, 10), torch.tensor([1, 2]), torch.ones(2))},
                keep_ratio=0.1), path)
    with pytest.raises(HubError, match=r"--avoid odd@1: weight lin.weight has shape \[8, 10\]"):
        Coverage([("odd@1", path)], 1.0).build({"lin": SparseLayer(torch.nn.Linear(12, 8))}, None)


# --- masks chosen by the adapter ----------------------------------------------------------------------


def _kept(adapter: Adapter) -> dict[str, torch.Tensor]:
    return {name: dense_mask(layer.kept, layer.shape, layer.block_size) for name, layer in adapter.layers.items()}


def _shared(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> int:
    return sum(int((a[n] & b[n]).sum()) for n in a)


@pytest.mark.parametrize("method", ["sparse", "block-sparse"])
def test_magnitude_masks_move_away_from_a_packed_expert(tmp_path: Path, method: str) -> None:
    """|W| ranks the same entries for every expert of a base: at beta 0 the second mask is the first,
    at beta 1 it shares fewer entries, at inf none (block-sparse: no tile), each of the same size."""
    config = {"method": method, "mask_score": "magnitude", "keep_ratio": 0.1, "block_size": 8, "targets": "qkv"}
    first = Adapter.apply(make_tiny_llama(), AdapterConfig(**config))
    path = tmp_path / "first.safetensors"
    pack(first.to_expert("first", "t", base_model="tiny"), path)
    shared = {}
    for beta in (0.0, 1.0, math.inf):
        cov = Coverage([("first@1", path)], beta)
        second = Adapter.apply(make_tiny_llama(), AdapterConfig(**config, avoid=["first@1"], avoid_beta=beta), coverage=cov)
        assert [lay.kept.numel() for lay in second.layers.values()] == [lay.kept.numel() for lay in first.layers.values()]
        shared[beta] = _shared(_kept(first), _kept(second))
    total = sum(int(m.sum()) for m in _kept(first).values())
    assert shared[0.0] == total > shared[1.0] and shared[math.inf] == 0, shared


# --- real training: library and CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny base with a word tokenizer, two tasks (colors: 4 answers, sizes: 2) as JSONL files, and a
    catalog in a private HUB_HOME holding colors-sparse@1 and colors-lora@1 (trained here, once)."""
    from hubtool.train import train

    root = tmp_path_factory.mktemp("avoid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUB_HOME", str(root / "home"))
        mp.delenv("HUB_CATALOG", raising=False)
        mp.delenv("HUB_DEBUG", raising=False)
        base = root / "base"
        make_tiny_llama(base)
        save_word_tokenizer(base, ["what", "color", "size", "is", "?", *COLORS, *SIZES, *THINGS])
        files = {}
        for name, question, answers in (("colors", "color", COLORS), ("sizes", "size", SIZES)):
            rows = [{"input": f"what {question} is {t} ?", "output": answers[i % len(answers)], "options": answers}
                    for i, t in enumerate(THINGS)]
            files[name] = root / f"{name}.jsonl"
            files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
        train("colors", data=str(files["colors"]), base=str(base), **TRAIN)
        train("colors", data=str(files["colors"]), base=str(base), method="lora", rank=2,
              **{k: v for k, v in TRAIN.items() if k not in ("keep_ratio", "mask_interval")})
        yield {"root": root, "base": base, **files}


def _positions(ref: str) -> dict[str, set[int]]:
    from hubtool.registry import Catalog

    return {w: set(d.indices.tolist()) for w, d in Catalog().load(ref).deltas.items()}


def _overlap(a: dict[str, set[int]], b: dict[str, set[int]]) -> int:
    return sum(len(a[w] & b.get(w, set())) for w in a)


def test_training_with_avoid_shares_fewer_entries_as_beta_grows(world) -> None:
    """Same seed and data for every run of the second task: beta 0 is the plain run, entry for entry;
    beta 1 shares fewer entries with colors-sparse@1; beta inf none. Provenance and lineage are recorded."""
    from hubtool.registry import Catalog
    from hubtool.train import train

    first = _positions("colors-sparse@1")
    common = dict(data=str(world["sizes"]), base=str(world["base"]), **TRAIN)
    plain = _positions(train("sizes", name="sizes-plain", **common).record.ref)
    shared = {}
    for beta, tag in ((0.0, "0"), (1.0, "1"), (math.inf, "inf")):
        result = train("sizes", name=f"sizes-beta{tag}", avoid=["colors"], avoid_beta=beta, **common)
        mine = _positions(result.record.ref)
        assert sum(map(len, mine.values())) == sum(map(len, plain.values()))
        shared[beta] = _overlap(first, mine)
        if beta == 0.0:
            assert mine == plain  # dividing by 1 changes nothing
    assert shared[0.0] > shared[1.0] > shared[math.inf] == 0, shared

    rec = Catalog().get("sizes-betainf")
    # the task "colors" means the sparse expert compose would pick; its LoRA expert is not a candidate
    assert rec.config["adapter"]["avoid"] == ["colors-sparse@1"] and rec.config["adapter"]["avoid_beta"] == "inf"
    assert rec.config["avoid"]["experts"] == ["colors-sparse@1"] and rec.config["avoid"]["asked"] == ["colors"]
    assert 0.09 < rec.config["avoid"]["covered_share"] < 0.11  # one expert at keep ratio 0.1
    assert Catalog().lineage("sizes-betainf")["parents"] == [
        {"ref": "colors-sparse@1", "role": "avoid", "weight": None, "present": True}
    ]
    assert "avoid" not in Catalog().get("sizes-plain").config["adapter"]  # untouched without --avoid


def test_cli_avoid_catalog_counts_sparse_experts_and_skips_lora(world) -> None:
    args = ["--base", world["base"], "--data", world["sizes"], *cli_args({k: v for k, v in TRAIN.items()})]
    out = ok(hub("train", "--task", "sizes", "--name", "sizes-cli", "--avoid-catalog", "--avoid-beta", "inf", *args))
    assert "Registered sizes-cli@1" in out
    assert "avoided (beta inf" in out and "colors-sparse@1" in out
    assert "not counted: colors-lora@1 (lora: covers every entry)" in out
    shown = ok_json(hub("show", "sizes-cli", "--json"))
    avoided = shown["config"]["avoid"]
    assert "colors-sparse@1" in avoided["experts"] and avoided["catalog"] is True
    assert not [r for r in avoided["experts"] if r.startswith("sizes-")]  # its own task's experts are not avoided
    assert {(p["ref"], p["role"]) for p in shown["lineage"]["parents"]} >= {("colors-sparse@1", "avoid")}
    assert _overlap(_positions("colors-sparse@1"), _positions("sizes-cli@1")) == 0


def test_bad_avoid_values_are_one_line_errors_and_register_nothing(world) -> None:
    from hubtool.errors import HubError
    from hubtool.registry import Catalog
    from hubtool.train import train

    other = write_sparse_expert(world["root"] / "other.safetensors", name="other", task="qa")  # base "tiny-llama"
    Catalog().register(other)
    before = [r["ref"] for r in ok_json(hub("list", "--json"))]
    # through the CLI: typer's parser for --avoid-beta, then train()'s checks, all before torch is imported
    args = ["--task", "sizes", "--base", world["base"], "--data", world["sizes"], "--max-steps", "1", "--quiet"]
    one_line_error(hub("train", *args, "--avoid", "nosuch"), "--avoid nosuch", "no expert of that name")
    one_line_error(hub("train", *args, "--avoid", "colors-sparse@9"), "--avoid colors-sparse@9", "no version 9")
    one_line_error(hub("train", *args, "--avoid", "colors", "--kind", "lora"), "--avoid", "--kind lora")
    one_line_error(hub("train", *args, "--avoid-beta", "2"), "--avoid-beta", "only with --avoid")
    one_line_error(hub("train", *args, "--avoid", "colors", "--avoid-beta", "-1"), "--avoid-beta", ">= 0 or inf")
    # the same checks in the library
    common = {"data": str(world["sizes"]), "base": str(world["base"]), "max_steps": 1, "quiet": True}
    for avoid, beta, words in (
        (["colors", ""], None, "--avoid '': expected a task, a category or an expert"),
        (["other"], None, "--avoid other: other@1 is an expert of base model tiny-llama"),
        (["boolq"], None, "--avoid boolq: no expert of task 'boolq' on base model"),
        (["colors"], "nan", "--avoid-beta 'nan': expected a number >= 0 or inf"),
        (["colors"], -math.inf, "--avoid-beta -inf"),
    ):
        with pytest.raises(HubError, match=re.escape(words)):
            train("sizes", avoid=avoid, avoid_beta=beta, **common)
    assert [r["ref"] for r in ok_json(hub("list", "--json"))] == before
