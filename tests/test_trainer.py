"""The loop: mask schedule, same seed same expert, Ctrl-C + resume equals an uninterrupted run,
best checkpoint, no dense optimizer state after freeze, gradient accumulation."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.sparse import AdapterConfig
from hubtool.sparse.adapters import Adapter
from hubtool.sparse.checkpoint import load
from hubtool.sparse.trainer import TrainConfig, Trainer


def token_data(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """10 random prompt tokens, then a reply that copies the first two and ends in a fixed token."""
    gen = torch.Generator().manual_seed(seed)
    rows = (torch.randint(3, 256, (10,), generator=gen).tolist() for _ in range(n))
    return [(p + [p[0], p[1], 5], [-100] * 10 + [p[0], p[1], 5]) for p in rows]


SENSITIVITY = AdapterConfig(method="sparse", keep_ratio=0.1, mask_interval=2, mask_steps=6)


def run(config=SENSITIVITY, *, steps=10, out_dir=None, resume=False, on_step=None, seed=0, **train):
    model = make_tiny_llama()
    adapter = Adapter.apply(model, config)
    train_cfg = TrainConfig(
        **{"max_steps": steps, "batch_size": 8, "lr": 1e-2, "seed": seed, "quiet": True, **train}
    )
    trainer = Trainer(model, adapter, token_data(40, 1), token_data(8, 2), train_cfg, out_dir, on_step)
    return adapter, trainer.fit(resume=resume)


def kept(adapter):
    return [layer.kept.clone() for layer in adapter.layers.values()]


def assert_same_expert(a, b):
    ea, eb = a.to_expert("x", "t", "tiny"), b.to_expert("x", "t", "tiny")
    for key in ea.deltas:
        assert torch.equal(ea.deltas[key].indices, eb.deltas[key].indices), key
        assert torch.equal(ea.deltas[key].values, eb.deltas[key].values), key


def test_masks_change_only_at_scheduled_steps_then_freeze():
    history: dict[int, list[torch.Tensor] | None] = {}

    def record(step, adapter):
        history[step] = (
            None if any(layer.kept is None for layer in adapter.layers.values()) else kept(adapter)
        )

    adapter, result = run(on_step=record)
    assert adapter.selection_steps == [2, 4, 6] and adapter.selections == [2, 4, 6]
    assert history[1] is None  # dense training before the first selection
    changed = [
        s for s in range(3, 11) if any(not torch.equal(x, y) for x, y in zip(history[s - 1], history[s]))
    ]
    assert changed and set(changed) <= {4, 6}  # re-selections do move the mask, and only they do
    assert all(history[s] is not None for s in range(2, 11))
    for s in range(7, 11):  # frozen after step 6
        assert all(torch.equal(x, y) for x, y in zip(history[6], history[s]))
    assert adapter.frozen and result.steps == 10


def test_same_seed_gives_an_identical_expert_and_another_seed_does_not():
    a, _ = run()
    b, _ = run()
    assert_same_expert(a, b)
    c, _ = run(seed=1)  # another data order
    assert not all(torch.equal(x, y) for x, y in zip(kept(a), kept(c)))


def test_ctrl_c_saves_and_resume_equals_an_uninterrupted_run(tmp_path):
    full, full_result = run(out_dir=tmp_path / "full")

    def interrupt(step, _adapter):
        if step == 3:  # mid-schedule: dense delta, a mask, re-selections still to come
            os.kill(os.getpid(), signal.SIGINT)

    _, stopped = run(out_dir=tmp_path / "cut", on_step=interrupt)
    assert stopped.interrupted and stopped.steps == 3
    assert load(tmp_path / "cut" / "checkpoint" / "state.pt")["step"] == 3

    resumed, result = run(out_dir=tmp_path / "cut", resume=True)
    assert not result.interrupted and result.steps == 10
    assert [r["loss"] for r in result.history] == [r["loss"] for r in full_result.history]
    assert resumed.selections == full.selections
    assert_same_expert(full, resumed)


def test_resume_after_freeze_and_a_real_keyboard_interrupt(tmp_path):
    def interrupt(step, _adapter):
        if step == 8:
            raise KeyboardInterrupt  # e.g. raised outside the main thread's signal handler

    _, stopped = run(out_dir=tmp_path, on_step=interrupt, save_every=100)
    assert stopped.interrupted and stopped.steps == 8
    resumed, _ = run(out_dir=tmp_path, resume=True)
    full, _ = run()
    assert_same_expert(full, resumed)


def test_optimizer_state_after_freeze_is_only_the_kept_entries(tmp_path):
    adapter, _ = run(out_dir=tmp_path)
    state = load(tmp_path / "checkpoint" / "state.pt")
    nnz = [layer.values.numel() for layer in adapter.layers.values()]
    moments = [s["exp_avg"].numel() for s in state["optimizer"]["state"].values()]
    assert moments == nnz
    assert all(
        t.numel() == n for t, n in zip(state["adapter"]["layers"].values(), nnz) for t in [t["values"]]
    )
    assert all("delta" not in t for t in state["adapter"]["layers"].values())


def test_best_checkpoint_by_validation_loss_is_restored():
    adapter, result = run(steps=12, eval_every=1)
    frozen = [r for r in result.history if r["step"] >= 6]  # the mask freezes after step 6
    best = min(frozen, key=lambda r: r["val_loss"])
    assert (result.best_step, result.best_val_loss) == (best["step"], best["val_loss"])
    assert all(r["val_loss"] >= result.best_val_loss for r in frozen)
    model_loss = Trainer(
        adapter.model, adapter, token_data(40, 1), token_data(8, 2), TrainConfig(quiet=True)
    ).evaluate()
    assert model_loss == pytest.approx(result.best_val_loss, abs=1e-6)


def test_gradient_accumulation_matches_a_bigger_batch():
    lora = AdapterConfig(method="lora")
    big, _ = run(lora, steps=4, batch_size=8)
    accumulated, _ = run(lora, steps=4, batch_size=4, grad_accum=2)  # the same 8 examples per step
    assert all(layer.B.abs().sum() > 0 for layer in big.layers.values())  # it did train
    for a, b in zip(big.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_progress_bar_runs(capsys):
    model = make_tiny_llama()
    adapter = Adapter.apply(model, AdapterConfig(method="lora"))
    Trainer(model, adapter, token_data(16, 1), None, TrainConfig(max_steps=2, batch_size=8)).fit()
    assert "tok/s" in capsys.readouterr().out


def test_train_glue_packs_and_registers_an_expert(tmp_path, hub_home):
    """hubtool.train end to end on a tiny Llama with a word-level tokenizer and a JSONL task."""
    import json

    from hubtool.format import unpack
    from hubtool.train import AdapterConfig, TrainConfig, train

    colors = ["red", "blue", "green", "pink"]
    things = [f"thing{i}" for i in range(80)]
    base = tmp_path / "base"
    make_tiny_llama(base)
    save_word_tokenizer(base, ["what", "color", "is", "?", *colors, *things])
    rows = [{"input": f"what color is {t} ?", "output": colors[i % 4]} for i, t in enumerate(things)]
    data = tmp_path / "colors.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = train(
        "colors",
        adapter=AdapterConfig(keep_ratio=0.05, mask_interval=2),
        training=TrainConfig(max_steps=4, batch_size=8, lr=1e-2, eval_limit=4, max_length=32),
        data=str(data),
        base=str(base),
        out_dir=tmp_path / "run",
        quiet=True,
    )
    assert not result.interrupted and result.path.is_file()
    assert {"train_loss", "val_loss", "rougeL", "exact_match"} <= set(result.metrics)
    record = result.record
    assert (record.name, record.kind, record.task, record.version) == ("colors-sparse", "sparse", "colors", 1)
    assert record.nnz == 2 * (205 + 102 + 102)  # round(0.05 x [64x64, 32x64, 32x64]) per layer
    assert record.config["data"]["sha256"] == result.config["data"]["sha256"]
    expert = unpack(result.path)
    assert expert.config["adapter"]["kind"] == "sparse" and len(expert.deltas) == 6
    assert expert.config["adapter"]["mask_interval"] == 2 and record.config["training"]["max_length"] == 32
    assert record.config["training"]["lr"] == 1e-2 and record.config["eval"]["limit"] == 4


def _data_parallel_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    adapter, _ = run(steps=6, batch_size=4)
    torch.save([(layer.kept, layer.values.detach()) for layer in adapter.layers.values()], f"{out}.{rank}")


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process_accumulating(tmp_path):
    """Rank r takes every other micro-batch and only the kept values are all-reduced, so two gloo
    processes train exactly what one process does with grad_accum=2 over the same micro-batches."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_data_parallel_worker, args=(port, str(tmp_path / "rank")), nprocs=2)
    single, _ = run(steps=6, batch_size=4, grad_accum=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank.{r}", weights_only=True) for r in (0, 1))
    for (k0, v0), (k1, v1), layer in zip(rank0, rank1, single.layers.values(), strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)  # the ranks agree
        assert torch.equal(k0, layer.kept)
        torch.testing.assert_close(v0, layer.values.detach(), atol=1e-6, rtol=1e-5)


def test_answer_only_loss_equals_the_models_own_loss():
    """causal_lm_loss runs the output layer only at scored positions; the value must not change."""
    from hubtool.sparse.loss import causal_lm_loss

    model = make_tiny_llama()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 256, (3, 20), generator=gen)
    labels = ids.clone()
    labels[:, :12] = -100  # a prompt of 12 tokens
    labels[2, 16:] = -100  # and a shorter answer in one row
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0  # right padding
    labels[1, 18:] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    ours = causal_lm_loss(model, batch)
    assert torch.allclose(ours, model(**batch).loss, atol=1e-6)
    ours.backward()  # and it is differentiable end to end
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


@pytest.mark.parametrize("config", [SENSITIVITY, AdapterConfig(method="block-sparse", keep_ratio=0.2, block_size=8,
                                                               mask_interval=2, mask_steps=4)])
def test_training_folds_w_in_place_and_restores_it_bit_for_bit(config):
    """Dense phase, re-selections, freeze, folded frozen steps with evaluations: afterwards every base
    weight (and the tensor the original module still shares with it) holds its original bits."""
    model = make_tiny_llama()
    shared = {n: p for n, p in model.named_parameters()}  # the layers wrap these very tensors
    originals = {n: p.detach().clone() for n, p in shared.items()}
    adapter = Adapter.apply(model, config)
    seen = []

    def on_step(step, a):
        seen.append(sum(layer.folded for layer in a.layers.values()))

    cfg = TrainConfig(max_steps=8, batch_size=8, lr=1e-2, eval_every=2, quiet=True)
    Trainer(model, adapter, token_data(40, 1), token_data(8, 2), cfg, on_step=on_step).fit()
    assert seen[0] == 0 and seen[-1] == len(adapter.layers)  # dense at first, folded once frozen
    for name, p in shared.items():
        assert torch.equal(p, originals[name]), name
    assert not any(layer.folded for layer in adapter.layers.values())
    trained = adapter.to_expert("x", "t", "tiny")
    assert all(d.values.abs().sum() > 0 for d in trained.deltas.values())  # it did train
