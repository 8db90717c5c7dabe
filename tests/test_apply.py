"""apply_expert against the dense reference W + scale * delta.to_dense(), on state dicts and a tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import make_tiny_llama

from hubtool.apply import apply_expert, check_base
from hubtool.delta import BlockSparseDelta, Expert, FullDelta, LoraDelta, SparseDelta
from hubtool.errors import FingerprintError, FormatError
from hubtool.format import fingerprint, pack, unpack

SHAPES = {"layers.0.q.weight": (24, 40), "layers.0.k.weight": (12, 40)}


def base_weights(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {name: torch.randn(*shape, generator=gen).to(dtype) for name, shape in SHAPES.items()}


def make_delta(kind: str, shape: tuple[int, int], base: torch.Tensor, gen: torch.Generator):
    rows, cols = shape
    fp = fingerprint(base)
    if kind == "sparse":
        indices = torch.randperm(rows * cols, generator=gen)[: rows * cols // 10].sort().values
        return SparseDelta(shape, indices, torch.randn(indices.numel(), generator=gen), fp)
    if kind == "block-sparse":  # B = 16 does not divide 24 x 40: edge tiles are cropped
        cells = -(-rows // 16) * -(-cols // 16)
        tiles = torch.randperm(cells, generator=gen)[: cells // 2 + 1].sort().values
        return BlockSparseDelta(shape, 16, tiles, torch.randn(tiles.numel(), 16, 16, generator=gen), fp)
    if kind == "lora":
        return LoraDelta(
            shape, torch.randn(4, cols, generator=gen), torch.randn(rows, 4, generator=gen), 4.0, fp
        )
    return FullDelta(shape, torch.randn(rows, cols, generator=gen), fp)


def make_expert(kind: str, base: dict[str, torch.Tensor], tmp_path: Path) -> Expert:
    """An expert over `base`'s weights, read back from a real packed file."""
    gen = torch.Generator().manual_seed(2)
    deltas = {name: make_delta(kind, tuple(w.shape), w, gen) for name, w in base.items()}
    path = tmp_path / f"{kind}.safetensors"
    pack(Expert(f"{kind}-expert", "qa", kind, "base", deltas), path)
    return unpack(path)


def reference(weight: torch.Tensor, delta, scale: float) -> torch.Tensor:
    return (weight.float() + scale * delta.to_dense(torch.float32)).to(weight.dtype)


@pytest.mark.parametrize("kind", ["sparse", "block-sparse", "lora", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_to_state_dict_equals_dense_reference(kind: str, dtype: torch.dtype, tmp_path: Path) -> None:
    weights = base_weights(dtype)
    expert = make_expert(kind, weights, tmp_path)
    want = {name: reference(w, expert.deltas[name], 0.7) for name, w in weights.items()}
    storage = {name: w.data_ptr() for name, w in weights.items()}
    apply_expert(weights, expert, scale=0.7)
    for name, w in weights.items():
        assert w.dtype == dtype and w.data_ptr() == storage[name]  # in place
        assert torch.equal(w, want[name]), name


def test_apply_to_tiny_llama_equals_dense_reference(tmp_path: Path) -> None:
    model = make_tiny_llama(hidden=32, layers=2, heads=2, kv_heads=1, vocab=128)
    params = dict(model.named_parameters())
    targets = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"]
    expert = make_expert("sparse", {n: params[n].detach() for n in targets}, tmp_path)
    want = {n: reference(params[n].detach(), expert.deltas[n], 2.0) for n in targets}
    untouched = params["model.layers.0.self_attn.k_proj.weight"].detach().clone()
    apply_expert(model, expert, scale=2.0)
    for n in targets:
        assert torch.equal(params[n].detach(), want[n]), n
    assert torch.equal(params["model.layers.0.self_attn.k_proj.weight"].detach(), untouched)
    assert params[targets[0]].requires_grad  # still a trainable parameter, changed in place


def test_strided_weight_is_updated_in_place() -> None:
    storage = torch.randn(40, 24)
    weight = storage.t()  # [24, 40] view, not contiguous
    delta = SparseDelta((24, 40), torch.tensor([0, 41, 959]), torch.tensor([1.0, 2.0, 3.0]))
    want = reference(weight, delta, 1.0)
    apply_expert({"w": weight}, Expert("x", "qa", "sparse", "b", {"w": delta}))
    assert torch.equal(storage.t(), want)


def test_fingerprint_mismatch_raises_and_changes_nothing(tmp_path: Path) -> None:
    weights = base_weights(torch.float32)
    expert = make_expert("sparse", weights, tmp_path)
    other = base_weights(torch.float32)
    other["layers.0.k.weight"] += 0.5  # a different base for one of the two weights
    before = {n: w.clone() for n, w in other.items()}
    want_fp, got_fp = expert.deltas["layers.0.k.weight"].fingerprint, fingerprint(other["layers.0.k.weight"])
    with pytest.raises(FingerprintError) as err:
        apply_expert(other, expert)
    assert str(err.value) == (
        f"expert sparse-expert was trained against a different base weight for layers.0.k.weight: "
        f"expected {want_fp}, got {got_fp}"
    )
    assert all(torch.equal(other[n], before[n]) for n in other)  # checked before any write
    apply_expert(other, expert, check_fingerprint=False)  # the caller can opt out
    assert not torch.equal(other["layers.0.k.weight"], before["layers.0.k.weight"])


def test_fingerprint_matches_a_bf16_copy_of_the_base(tmp_path: Path) -> None:
    weights = base_weights(torch.float32)
    expert = make_expert("sparse", weights, tmp_path)
    assert set(check_base(base_weights(torch.bfloat16), expert)) == set(SHAPES)


def test_missing_weight_or_wrong_shape_raises(tmp_path: Path) -> None:
    weights = base_weights(torch.float32)
    expert = make_expert("lora", weights, tmp_path)
    missing = {"layers.0.q.weight": weights["layers.0.q.weight"]}
    with pytest.raises(
        FormatError, match="expert lora-expert: weight layers.0.k.weight is not in the target"
    ):
        apply_expert(missing, expert)
    wrong = dict(weights, **{"layers.0.k.weight": torch.zeros(12, 41)})
    with pytest.raises(
        FormatError, match=r"layers.0.k.weight has shape \[12, 41\], the expert expects \[12, 40\]"
    ):
        apply_expert(wrong, expert)
