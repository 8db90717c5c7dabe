"""Mask selection: exact per-layer top-k, deterministic ties, true B x B tiles, schedules, targets."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_llama
from torch import nn

from hubtool.errors import HubError
from hubtool.sparse import AdapterConfig
from hubtool.sparse.adapters import Adapter
from hubtool.sparse.masks import dense_mask, select, selection_steps, tile_scores, top_k
from hubtool.sparse.targets import find_targets


def expected_k(keep_ratio: float, numel: int) -> int:
    return max(1, int(keep_ratio * numel + 0.5))


def expected_tiles(keep_ratio: float, shape: tuple[int, int], b: int) -> int:
    return max(1, int(keep_ratio * shape[0] * shape[1] / b**2 + 0.5))


def tile_union(tiles: list[int], shape: tuple[int, int], b: int) -> torch.Tensor:
    """The B x B squares (cut at W's edge) of the given tile ids, drawn one by one."""
    grid_cols = -(-shape[1] // b)
    out = torch.zeros(shape, dtype=torch.bool)
    for t in tiles:
        r, c = divmod(t, grid_cols)
        out[r * b : (r + 1) * b, c * b : (c + 1) * b] = True
    return out


def test_top_k_is_exact_and_breaks_ties_by_position():
    scores = torch.tensor([0.0, 3.0, 1.0, 3.0, 1.0, 1.0, 2.0, 1.0, float("nan")])
    assert top_k(scores, 1).tolist() == [1]
    assert top_k(scores, 3).tolist() == [1, 3, 6]
    assert top_k(scores, 5).tolist() == [1, 2, 3, 4, 6]  # two of the four 1.0s: the lowest positions
    assert top_k(torch.zeros(10), 4).tolist() == [0, 1, 2, 3]
    assert top_k(scores, 9).tolist() == list(range(9))  # NaN ranks last but k = n keeps it


@pytest.mark.parametrize("keep_ratio", [0.002, 0.01, 0.05, 0.3])
@pytest.mark.parametrize("score", ["magnitude", "random", "snip"])
def test_every_layer_keeps_exactly_round_keep_ratio_numel(keep_ratio, score):
    torch.manual_seed(0)
    model = make_tiny_llama()
    adapter = Adapter.apply(model, AdapterConfig(keep_ratio=keep_ratio, mask_score=score, targets="all"))
    if adapter.needs_probe:
        model(input_ids=torch.randint(0, 256, (2, 12)), labels=torch.randint(0, 256, (2, 12))).loss.backward()
    assert adapter.frozen and len(adapter.layers) == 14  # 7 linear modules x 2 layers
    for layer in adapter.layers.values():
        numel = layer.weight.numel()
        assert layer.kept.numel() == expected_k(keep_ratio, numel)
        assert torch.equal(layer.kept, layer.kept.unique())  # sorted, unique
        assert layer.values.shape == (expected_k(keep_ratio, numel),)
        assert [p.shape for p in layer.trainable()] == [layer.values.shape]  # nothing dense is trained


def test_tile_scores_match_a_loop_on_a_ragged_grid():
    torch.manual_seed(1)
    s = torch.randn(37, 21)
    b = 8
    got = tile_scores(s, b).view(5, 3)
    for r in range(5):
        for c in range(3):
            assert torch.isclose(got[r, c], s[r * b : (r + 1) * b, c * b : (c + 1) * b].abs().sum())


def test_block_masks_are_true_tiles_on_a_non_square_weight():
    torch.manual_seed(2)
    shape, b, keep_ratio = (45, 30), 16, 0.5  # neither dim a multiple of B: edge tiles are partial
    scores = torch.randn(shape)
    tiles = select(scores, keep_ratio, b)
    assert tiles.numel() == expected_tiles(keep_ratio, shape, b) == 3  # of a 3 x 2 grid
    per_tile = tile_scores(scores, b)
    assert per_tile[tiles].min() >= per_tile[[t for t in range(6) if t not in tiles.tolist()]].max()
    assert torch.equal(dense_mask(tiles, shape, b), tile_union(tiles.tolist(), shape, b))


def test_block_count_follows_keep_ratio_over_tile_area():
    shape, b = (64, 48), 16  # 12 tiles of 256
    for keep_ratio, n in [(0.05, 1), (0.25, 3), (0.5, 6), (1.0, 12)]:
        assert select(torch.randn(shape), keep_ratio, b).numel() == n


def test_block_sparse_adapter_on_non_multiple_shapes_trains_whole_tiles():
    # tiny Llama k_proj is [32, 64]; B = 12 divides neither dimension
    model = make_tiny_llama()
    config = AdapterConfig(method="block-sparse", block_size=12, keep_ratio=0.3, mask_score="random")
    adapter = Adapter.apply(model, config)
    layer = adapter.layers["model.layers.0.self_attn.k_proj"]
    assert layer.values.shape == (expected_tiles(0.3, (32, 64), 12), 12, 12) == (4, 12, 12)
    with torch.no_grad():
        layer.values.normal_()  # stands in for training: every entry of a kept tile moves
    dense = layer.to_delta().to_dense()
    assert torch.equal(dense != 0, tile_union(layer.kept.tolist(), (32, 64), 12))


def test_selection_schedule():
    assert selection_steps(6, 30, 100) == [6, 12, 18, 24, 30]
    assert selection_steps(6, 20, 100) == [6, 12, 18]  # freezes after 18, the last one inside the window
    assert selection_steps(6, 30, 10) == [6]  # never past the end of training
    assert selection_steps(6, 4, 100) == [4]  # window shorter than an interval: one selection at its end
    assert selection_steps(1, 3, 100) == [1, 2, 3]


def test_random_masks_are_seeded():
    def kept(seed):
        model = make_tiny_llama()
        adapter = Adapter.apply(model, AdapterConfig(mask_score="random", seed=seed))
        return [layer.kept for layer in adapter.layers.values()]

    a, b, c = kept(0), kept(0), kept(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[3])  # layers get their own draw, not one shared pattern


def test_targets_presets_on_llama():
    model = make_tiny_llama()
    qkv = find_targets(model, "qkv")
    assert qkv == [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkv"]
    assert len(find_targets(model, "attn")) == 8 and all(
        "self_attn" in n for n in find_targets(model, "attn")
    )
    assert len(find_targets(model, "mlp")) == 6 and all(".mlp." in n for n in find_targets(model, "mlp"))
    assert len(find_targets(model, "all")) == 14  # lm_head is never a target
    assert find_targets(model, r"layers\.1\..*v_proj") == ["model.layers.1.self_attn.v_proj"]


def test_qkv_means_the_fused_projection_on_phi3_and_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel, Phi3Config, Phi3ForCausalLM

    phi3 = Phi3ForCausalLM(
        Phi3Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=0,
        )
    )
    assert find_targets(phi3, "qkv") == ["model.layers.0.self_attn.qkv_proj"]
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    assert find_targets(gpt2, "qkv") == ["transformer.h.0.attn.c_attn"]
    assert find_targets(gpt2, "mlp") == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]


def test_unknown_targets_list_what_exists():
    with pytest.raises(HubError, match=r"match no linear module.*q_proj.*v_proj"):
        find_targets(make_tiny_llama(), "attention_query")
    with pytest.raises(HubError, match="valid regex"):
        find_targets(make_tiny_llama(), "q_proj(")
    with pytest.raises(HubError, match="adapter kind 'dora': expected one of sparse, block-sparse, lora, full"):
        AdapterConfig(kind="dora")
    with pytest.raises(HubError, match="adapter kind 'dora'"):
        AdapterConfig(method="dora")  # the old keyword still works
    assert AdapterConfig(method="lora").kind == "lora" and "method" not in AdapterConfig().to_dict()
    with pytest.raises(HubError, match="targets ''"):
        AdapterConfig(targets="")
    # configs stored before the rename (the catalog's train configs, checkpoints) say "method"
    stored = {**AdapterConfig(kind="block-sparse", block_size=8).to_dict(), "avoid": [], "avoid_beta": "inf"}
    stored["method"] = stored.pop("kind")
    config = AdapterConfig.from_dict(stored)
    assert config.kind == "block-sparse" and config.block_size == 8 and config.avoid_beta == float("inf")
    normalized = AdapterConfig.normalized(stored)
    assert normalized["kind"] == "block-sparse" and "method" not in normalized
    with pytest.raises(HubError, match="unknown field 'colour'"):
        AdapterConfig.from_dict({"kind": "lora", "colour": 1})


def test_linear_without_bias_and_conv1d_targets_only():
    model = nn.Sequential(nn.Embedding(4, 4), nn.LayerNorm(4))
    with pytest.raises(HubError, match=r"\(none\)"):
        find_targets(model, "all")
