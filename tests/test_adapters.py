"""Every adapter kind, one table: it trains, its expert reproduces the trained model, the frozen
sparse layer's gradients equal a dense reference's, and GPT-2's transposed Conv1D weights round-trip."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tiny import make_tiny_llama

from hubtool.delta import DELTA_KINDS, KIND, BlockSparseDelta, FullDelta, LoraDelta, SparseDelta
from hubtool.sparse import AdapterConfig
from hubtool.sparse.adapters import Adapter
from hubtool.sparse.layers import SparseLayer
from hubtool.sparse.trainer import TrainConfig, Trainer

KINDS = {
    # kind, adapter overrides, delta type, lr (full fine-tuning moves every entry, so a smaller lr)
    "sparse": ("sparse", {"keep_ratio": 0.1, "mask_interval": 2}, SparseDelta, 2e-2),
    "block-sparse": (
        "block-sparse",
        {"keep_ratio": 0.2, "block_size": 8, "mask_interval": 2},
        BlockSparseDelta,
        2e-2,
    ),
    "sparse-snip": ("sparse", {"keep_ratio": 0.1, "mask_score": "snip"}, SparseDelta, 2e-2),
    "lora": ("lora", {"rank": 4, "alpha": 16}, LoraDelta, 1e-2),
    "full": ("full", {}, FullDelta, 3e-3),
}


def test_the_table_covers_every_kind_of_the_registry():
    assert {kind for kind, *_ in KINDS.values()} == set(DELTA_KINDS)
    assert all(KIND[kind].delta_type is delta_type for kind, _, delta_type, _ in KINDS.values())


def token_data(n: int, seed: int, vocab: int = 256) -> list[tuple[list[int], list[int]]]:
    """Prompts of 10 random tokens answered by a fixed 3-token reply: learnable in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    answer = [7, 9, 11]
    return [
        (prompt + answer, [-100] * len(prompt) + answer)
        for prompt in (torch.randint(3, vocab, (10,), generator=gen).tolist() for _ in range(n))
    ]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def add_expert(model, expert):
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, delta in expert.deltas.items():
            assert tuple(params[key].shape) == delta.shape, key
            params[key] += delta.to_dense()
    return model


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_trains_and_its_expert_reproduces_the_model(kind):
    method, overrides, delta_type, lr = KINDS[kind]
    torch.manual_seed(0)
    model = make_tiny_llama()
    adapter = Adapter.apply(model, AdapterConfig(kind=method, targets="qkv", **overrides))
    train, val = token_data(32, seed=1), token_data(8, seed=2)
    trainer = Trainer(model, adapter, train, val, TrainConfig(max_steps=8, batch_size=8, lr=lr, quiet=True))
    before = trainer.evaluate()
    result = trainer.fit()
    assert result.best_val_loss < before - 0.25, (before, result.best_val_loss)

    expert = adapter.to_expert(f"tiny-{kind}", task="const", base_model="tiny")
    assert expert.kind == method
    assert set(expert.deltas) == {
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qkv"
    }
    assert all(isinstance(d, delta_type) and d.fingerprint for d in expert.deltas.values())

    ids = torch.randint(3, 256, (2, 12))
    trained = logits(model, ids)
    rebuilt = logits(add_expert(make_tiny_llama(), expert), ids)
    torch.testing.assert_close(rebuilt, trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(adapter.merge(), ids), trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["sparse", "block-sparse", "sparse-snip"])
def test_sparse_kinds_change_nothing_outside_the_mask(kind):
    method, overrides, _, lr = KINDS[kind]
    model, base = make_tiny_llama(), make_tiny_llama()
    adapter = Adapter.apply(model, AdapterConfig(kind=method, **overrides))
    Trainer(model, adapter, token_data(32, seed=1), None, TrainConfig(max_steps=6, lr=lr, quiet=True)).fit()
    base_params = dict(base.named_parameters())
    for name, layer in adapter.layers.items():
        w_eff = layer.weight + layer.delta_dense()
        outside = ~_kept_mask(layer)
        assert torch.equal(w_eff[outside], base_params[f"{name}.weight"][outside])
        assert (w_eff != base_params[f"{name}.weight"]).sum() > 0.5 * layer.values.numel()  # it did train
    assert sum(p.numel() for p in adapter.parameters()) == sum(
        lay.values.numel() for lay in adapter.layers.values()
    )


def _kept_mask(layer: SparseLayer) -> torch.Tensor:
    from hubtool.sparse.masks import dense_mask

    return dense_mask(layer.kept, layer.shape, layer.block_size)


@pytest.mark.parametrize("block_size", [None, 8])
def test_frozen_layer_gradients_equal_a_dense_reference_gathered_at_the_mask(block_size):
    torch.manual_seed(3)
    base = torch.nn.Linear(20, 28, bias=True)  # 28 x 20: not multiples of 8, edge tiles are partial
    layer = SparseLayer(base, block_size=block_size)
    kept = torch.tensor([1, 4, 5]) if block_size else torch.randperm(28 * 20)[:40].sort().values
    layer.freeze(kept)
    with torch.no_grad():
        layer.values.normal_()
    x = torch.randn(3, 5, 20, requires_grad=True)
    probe = torch.randn(3, 5, 28)
    (layer(x) * probe).sum().backward()

    d = layer.delta_dense().clone().requires_grad_(True)  # the dense reference: y = x (W + D)ᵀ + b
    x_ref = x.detach().clone().requires_grad_(True)
    (torch.nn.functional.linear(x_ref, base.weight.detach() + d, base.bias.detach()) * probe).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.values.grad[...], layer.gather(d.grad))
    assert base.weight.grad is None  # the frozen base weight never gets a gradient
    if block_size:  # entries of edge tiles that fall outside W get no gradient at all
        outside = layer.gather(torch.ones(28, 20)) == 0
        assert outside.any() and (layer.values.grad[outside] == 0).all()


@pytest.mark.parametrize("method", ["sparse", "block-sparse", "lora", "full"])
def test_gpt2_conv1d_deltas_are_stored_in_the_parameters_layout(method):
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2():
        torch.manual_seed(5)
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=32)
        ).eval()

    model = gpt2()
    config = AdapterConfig(kind=method, keep_ratio=0.2, block_size=12, mask_score="magnitude")
    adapter = Adapter.apply(model, config)
    with torch.no_grad():  # random deltas stand in for training
        for p in adapter.parameters():
            p.normal_(std=0.05)
    expert = adapter.to_expert("g", task="t", base_model="gpt2-tiny")
    ((key, delta),) = expert.deltas.items()
    assert key == "transformer.h.0.attn.c_attn.weight" and delta.shape == (32, 96)  # Conv1D: [in, out]
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(
        logits(add_expert(gpt2(), expert), ids), logits(model, ids), atol=1e-5, rtol=1e-5
    )
    merged = adapter.merge()
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    torch.testing.assert_close(
        logits(merged, ids), logits(add_expert(gpt2(), expert), ids), atol=1e-5, rtol=1e-5
    )


def test_snip_never_trains_a_dense_delta():
    model = make_tiny_llama()
    adapter = Adapter.apply(model, AdapterConfig(mask_score="snip", keep_ratio=0.05))
    assert adapter.needs_probe and adapter.parameters() and all(p.dim() == 0 for p in adapter.parameters())
    seen = []
    Trainer(
        model,
        adapter,
        token_data(16, seed=1),
        None,
        TrainConfig(max_steps=3, quiet=True),
        on_step=lambda step, a: seen.append([tuple(p.shape) for p in a.parameters()]),
    ).fit()
    nnz = [(max(1, int(0.05 * lay.weight.numel() + 0.5)),) for lay in adapter.layers.values()]
    assert seen == [nnz] * 3


# --- W + D folded into W in place (the Trainer's frozen-mask path) ------------------------------------


def _frozen_pair(block_size, dtype, seed=4):
    """Two frozen layers on equal copies of one base [28, 20], same mask and values; W's original bits."""
    torch.manual_seed(seed)
    base = torch.nn.Linear(20, 28, bias=True).to(dtype)
    kept = torch.tensor([0, 4, 5, 11]) if block_size else torch.randperm(28 * 20)[:40].sort().values
    layers = []
    for _ in range(2):
        copy = torch.nn.Linear(20, 28, bias=True).to(dtype)
        copy.load_state_dict(base.state_dict())
        layer = SparseLayer(copy, block_size=block_size)
        layer.freeze(kept)
        layers.append(layer)
    with torch.no_grad():
        layers[0].values.normal_(std=0.1)
        layers[1].values.copy_(layers[0].values)
    return layers, base.weight.detach().clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [None, 8])
def test_folded_layer_equals_the_copy_path_bit_for_bit_and_restores_w(block_size, dtype):
    (folded, copied), w0 = _frozen_pair(block_size, dtype)
    folded.fold_weights(True)
    for step in range(3):  # each round changes the values in place, as an optimizer step does
        x = torch.randn(3, 5, 20, dtype=dtype)
        probe = torch.randn(3, 5, 28, dtype=dtype)
        outs = []
        for layer in (folded, copied):
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            (y * probe).sum().backward()
            outs.append((y.detach(), xi.grad, layer.values.grad.clone()))
        assert folded.folded and not copied.folded
        for a, b in zip(*outs):
            assert torch.equal(a, b), step
        # The folded W is the copy path's W + D, entry for entry, and base_weight() is the untouched base.
        assert torch.equal(folded.weight, copied.merged().weight)
        assert torch.equal(folded.base_weight(), w0) and torch.equal(folded.stored_weight, w0)
        with torch.no_grad():
            for layer in (folded, copied):
                layer.values.add_(layer.values.grad, alpha=-0.05)
                layer.values.grad = None
    folded.fold_weights(False)
    assert not folded.folded and torch.equal(folded.weight, w0)  # restored bit for bit
    assert torch.equal(copied.weight, w0)  # the copy path never touches W


def test_folded_training_steps_equal_the_copy_path_and_the_expert_is_unchanged():
    """A few AdamW steps (foreach in-place updates, clipping) through the whole model, folded or not:
    the same values bit for bit, the same expert and fingerprints, and the base weights restored."""
    runs = []
    for fold in (True, False):
        model = make_tiny_llama()
        originals = {n: p.detach().clone() for n, p in model.named_parameters()}
        adapter = Adapter.apply(model, AdapterConfig(keep_ratio=0.1, mask_score="random", targets="qkv"))
        params = adapter.parameters()
        opt = torch.optim.AdamW(params, lr=1e-2)
        batch = torch.randint(3, 256, (4, 12), generator=torch.Generator().manual_seed(7))
        with adapter.folded() if fold else contextlib.nullcontext():
            for _ in range(3):
                model(input_ids=batch, labels=batch).loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 0.1)
                opt.step()
                opt.zero_grad(set_to_none=True)
            inside = adapter.to_expert("e", task="t", base_model="tiny")  # while W is still folded
            logits_inside = logits(model, batch)
            assert all(layer.folded == fold for layer in adapter.layers.values())
        assert not any(layer.folded for layer in adapter.layers.values())
        for name, layer in adapter.layers.items():
            assert torch.equal(layer.weight, originals[f"{name}.weight"]), name
        runs.append((inside, [p.detach().clone() for p in params], logits_inside, logits(model, batch)))
    (e_fold, v_fold, in_fold, out_fold), (e_copy, v_copy, in_copy, out_copy) = runs
    assert all(torch.equal(a, b) for a, b in zip(v_fold, v_copy))
    assert torch.equal(in_fold, in_copy) and torch.equal(out_fold, out_copy) and torch.equal(in_fold, out_fold)
    for key, delta in e_fold.deltas.items():
        assert delta.fingerprint == e_copy.deltas[key].fingerprint, key  # of the base W, not of W + D
        assert torch.equal(delta.values, e_copy.deltas[key].values), key


def test_folded_weights_are_restored_when_the_block_raises_and_merge_is_exact():
    model = make_tiny_llama()
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = Adapter.apply(model, AdapterConfig(keep_ratio=0.1, mask_score="magnitude"))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(std=0.05)
    ids = torch.randint(3, 256, (2, 9))
    merged_outside = {n: lay.merged().weight.clone() for n, lay in adapter.layers.items()}
    with pytest.raises(ValueError, match="boom"), adapter.folded():
        logits(model, ids)
        assert all(layer.folded for layer in adapter.layers.values())
        assert all(torch.equal(lay.merged().weight, merged_outside[n]) for n, lay in adapter.layers.items())
        raise ValueError("boom")
    for name, layer in adapter.layers.items():
        assert not layer.folded and torch.equal(layer.weight, originals[f"{name}.weight"]), name


def test_refolding_between_a_forward_and_its_backward_is_an_error_not_a_wrong_gradient():
    (layer, _), _ = _frozen_pair(None, torch.float32)
    layer.fold_weights(True)
    x = torch.randn(4, 20, requires_grad=True)
    first = layer(x).sum()
    with torch.no_grad():
        layer.values.add_(1.0)  # an update before the first forward's backward ran
    layer(x)  # refolds W in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()
