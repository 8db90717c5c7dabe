"""PEFT interop on a tiny random Llama: real adapters from peft's get_peft_model in, hubtool experts out."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, ShiraConfig, SupertuningConfig, get_peft_model
from tiny import make_tiny_llama
from transformers import AutoModelForCausalLM

from hubtool.delta import BlockSparseDelta, Expert, LoraDelta, SparseDelta
from hubtool.errors import HubError
from hubtool.hub.card import export_card
from hubtool.interop.peft import export_peft, import_peft

QKV = ("q_proj", "k_proj", "v_proj")
TOKENS = torch.tensor([[1, 17, 42, 99, 3, 250, 7, 64]])


pytestmark = pytest.mark.usefixtures("hub_home")  # conftest.py: HUB_HOME in tmp_path


@pytest.fixture
def base_dir(tmp_path):
    make_tiny_llama(tmp_path / "base")
    return tmp_path / "base"


def _load(base_dir):
    # from_pretrained (not the in-memory model) so PEFT records base_model_name_or_path in adapter_config.json
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


def _with_deltas(model, expert: Expert):
    """The reference: a copy of the model with W + delta.to_dense() written into its weights."""
    model = copy.deepcopy(model)
    state = model.state_dict()
    for weight, delta in expert.deltas.items():
        state[weight] = state[weight] + delta.to_dense(torch.float32)
    model.load_state_dict(state)
    return model


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def _assert_import_matches_merge(peft_model, folder, base_dir):
    """Import the saved adapter; base weights + imported deltas must equal PEFT's own merge."""
    expert = import_peft(folder, task="demo")
    base = _load(base_dir).state_dict()
    merged = peft_model.merge_and_unload().state_dict()
    assert expert.deltas and expert.task == "demo" and expert.base_model == str(base_dir)
    for name, weight in base.items():
        expected = merged[name]
        got = weight + expert.deltas[name].to_dense() if name in expert.deltas else weight
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
    return expert


def _random_sparse_expert(base, kind: str, seed: int = 0) -> Expert:
    """q/k/v of both layers, with a different keep ratio per weight so export must pad unevenly."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for i, (layer, proj) in enumerate((layer, proj) for layer in range(2) for proj in QKV):
        weight = f"model.layers.{layer}.self_attn.{proj}.weight"
        shape = tuple(base.state_dict()[weight].shape)
        numel = shape[0] * shape[1]
        if kind == "sparse":
            nnz = int(numel * (0.02 + 0.03 * i))
            indices = torch.randperm(numel, generator=gen)[:nnz].sort().values
            deltas[weight] = SparseDelta(
                shape, indices, torch.randn(nnz, generator=gen).to(torch.bfloat16), f"fp{i}"
            )
        else:  # 12 x 12 tiles do not divide 64 or 32: edge tiles stick out of W
            grid = (-(-shape[0] // 12)) * (-(-shape[1] // 12))
            tiles = torch.randperm(grid, generator=gen)[: 2 + i % 3].sort().values
            deltas[weight] = BlockSparseDelta(
                shape, 12, tiles, torch.randn(tiles.numel(), 12, 12, generator=gen), f"fp{i}"
            )
    return Expert(
        name="qa-sparse",
        task="qa",
        kind=kind,
        base_model="tiny-base",
        deltas=deltas,
        base_revision="rev-1",
        keep_ratio=0.05,
        targets="qkv",
    )


# --- import real PEFT adapters ----------


@pytest.mark.parametrize(
    "config",
    [
        {"r": 4, "lora_alpha": 8},
        {
            "r": 4,
            "lora_alpha": 8,
            "use_rslora": True,
            "rank_pattern": {"q_proj": 2},
            "alpha_pattern": {"layers.1.self_attn.v_proj": 3},
        },
    ],
    ids=["plain", "rslora-patterns"],
)
def test_import_lora_equals_peft_merge(base_dir, tmp_path, config):
    peft_model = get_peft_model(
        _load(base_dir), LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False, **config)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    expert = _assert_import_matches_merge(peft_model, tmp_path / "adapter", base_dir)
    assert expert.kind == "lora" and len(expert.deltas) == 4
    assert all(isinstance(d, LoraDelta) for d in expert.deltas.values())


def test_import_lora_fan_in_fan_out_on_gpt2_conv1d(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=128, n_positions=32)
    ).save_pretrained(tmp_path / "gpt2")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2").eval()
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
    )
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    expert = _assert_import_matches_merge(peft_model, tmp_path / "adapter", tmp_path / "gpt2")
    assert expert.deltas["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: [in, out]


def test_import_shira_equals_peft_merge(base_dir, tmp_path):
    config = ShiraConfig(r=2, target_modules=["q_proj", "k_proj"], init_weights=False, random_seed=1)
    peft_model = get_peft_model(_load(base_dir), config)
    peft_model.save_pretrained(tmp_path / "adapter")
    expert = _assert_import_matches_merge(peft_model, tmp_path / "adapter", base_dir)
    assert expert.kind == "sparse" and expert.value_dtype == "float32"
    q = expert.deltas["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q, SparseDelta) and q.nnz == 2 * (64 + 64)
    assert bool((q.indices[1:] > q.indices[:-1]).all())  # sorted, unique
    assert expert.keep_ratio == pytest.approx((2 * 256 + 2 * 192) / (2 * 64 * 64 + 2 * 32 * 64))


def test_import_supertuning_equals_peft_merge(base_dir, tmp_path):
    peft_model = get_peft_model(
        _load(base_dir), SupertuningConfig(target_modules=["v_proj"], sparsity=0.9, init_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    expert = _assert_import_matches_merge(peft_model, tmp_path / "adapter", base_dir)
    assert expert.kind == "sparse" and expert.deltas["model.layers.1.self_attn.v_proj.weight"].nnz == int(
        32 * 64 * 0.1
    )


# --- export: PEFT must compute exactly W + delta ----------


@pytest.mark.parametrize("kind", ["sparse", "block-sparse"])
@pytest.mark.parametrize("fmt", ["shira", "supertuning"])
def test_export_sparse_loads_in_peft_with_the_same_logits(base_dir, tmp_path, fmt, kind):
    base = _load(base_dir)
    expert = _random_sparse_expert(base, kind)
    out = export_peft(expert, tmp_path / "out", base_model_name_or_path=str(base_dir), format=fmt)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == fmt.upper()

    peft_model = PeftModel.from_pretrained(_load(base_dir), out).eval()
    reference = _logits(_with_deltas(base, expert))
    assert not torch.allclose(reference, _logits(base), atol=1e-3)  # the deltas do change the outputs
    torch.testing.assert_close(_logits(peft_model), reference, rtol=0, atol=1e-5)

    back = import_peft(out)  # round trip: same masks (padding trimmed), values and metadata
    assert (
        back.name,
        back.task,
        back.kind,
        back.base_model,
        back.base_revision,
        back.keep_ratio,
        back.targets,
    ) == ("qa-sparse", "qa", kind, "tiny-base", "rev-1", 0.05, "qkv")
    assert back.deltas.keys() == expert.deltas.keys()
    for weight, delta in expert.deltas.items():
        got = back.deltas[weight]
        assert isinstance(got, SparseDelta) and got.fingerprint == delta.fingerprint
        assert torch.equal(got.to_dense(), delta.to_dense())
        if kind == "sparse":
            assert torch.equal(got.indices, delta.indices)


def test_export_lora_round_trips_and_matches_peft(base_dir, tmp_path):
    base = _load(base_dir)
    gen = torch.Generator().manual_seed(5)
    deltas = {}
    for rank, scale, weight in [
        (4, 2.0, "model.layers.0.self_attn.q_proj.weight"),
        (2, 0.5, "model.layers.1.self_attn.v_proj.weight"),
        (4, 2.0, "model.layers.1.mlp.down_proj.weight"),
    ]:
        out_dim, in_dim = base.state_dict()[weight].shape
        deltas[weight] = LoraDelta(
            (out_dim, in_dim),
            torch.randn(rank, in_dim, generator=gen),
            torch.randn(out_dim, rank, generator=gen) * 0.1,
            scale,
        )
    expert = Expert(
        name="qa-lora", task="qa", kind="lora", base_model=str(base_dir), deltas=deltas, value_dtype="float32"
    )
    out = export_peft(expert, tmp_path / "out")  # format defaults to lora for a lora expert

    peft_model = PeftModel.from_pretrained(_load(base_dir), out).eval()
    torch.testing.assert_close(_logits(peft_model), _logits(_with_deltas(base, expert)), rtol=0, atol=1e-5)
    back = import_peft(out)
    for weight, delta in deltas.items():
        got = back.deltas[weight]
        assert (
            torch.equal(got.A, delta.A)
            and torch.equal(got.B, delta.B)
            and got.scale == pytest.approx(delta.scale)
        )


def test_export_writes_a_model_card_and_refuses_to_overwrite(base_dir, tmp_path):
    expert = _random_sparse_expert(_load(base_dir), "sparse")
    assert not (export_peft(expert, tmp_path / "bare") / "README.md").exists()  # the card is the caller's
    out = export_peft(expert, tmp_path / "out", card=export_card)
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    # "tiny-base" is no Hub id: the card names no base_model rather than one the Hub cannot resolve
    assert "base_model" not in front and "base_model_relation" not in front
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-generation"
    assert {"hubtool", "qa", "sparse", "shira", "peft"} <= set(front["tags"])
    assert "`tiny-base`" in card and "PeftModel.from_pretrained" in card
    with pytest.raises(HubError, match="already exists"):
        export_peft(expert, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]  # no temp folder left behind


def test_export_card_names_the_embedded_base_by_its_hub_id(base_dir, tmp_path):
    """As push's card does: the embedded smollm2-135m is HuggingFaceTB/SmolLM2-135M-Instruct on the Hub,
    an adapter of it; adapter_config.json keeps the loadable base it was given."""
    import dataclasses

    from hubtool.models import EMBEDDED

    expert = dataclasses.replace(_random_sparse_expert(_load(base_dir), "sparse"), base_model="smollm2-135m")
    out = export_peft(expert, tmp_path / "out", base_model_name_or_path=str(base_dir), card=export_card)
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["base_model"] == EMBEDDED["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["base_model_relation"] == "adapter"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)


def test_export_files_follow_the_umask(base_dir, tmp_path):
    """safetensors writes through a private temp file (0600); the exported folder holds ordinary files,
    as the blob store does: 0666 & ~umask for every file, 0777 & ~umask for the folder."""
    from hubtool.fileio import dir_mode, file_mode

    out = export_peft(_random_sparse_expert(_load(base_dir), "sparse"), tmp_path / "out", card=export_card)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert "adapter_model.safetensors" in modes and set(modes.values()) == {file_mode()}, modes
    assert out.stat().st_mode & 0o777 == dir_mode()


def test_shira_refuses_an_expert_too_dense_for_it_but_supertuning_takes_it(base_dir, tmp_path):
    shape = (32, 64)
    # 2040 of 2048 entries needs r = ceil(2040 / 96) = 22, i.e. 2112 SHiRA entries: more than the layer has
    indices = torch.arange(2040)
    expert = Expert(
        name="dense-ish",
        task="qa",
        kind="sparse",
        base_model=str(base_dir),
        deltas={"model.layers.0.self_attn.k_proj.weight": SparseDelta(shape, indices, torch.ones(2040))},
    )
    with pytest.raises(HubError, match="format='supertuning'"):
        export_peft(expert, tmp_path / "shira")
    assert not (tmp_path / "shira").exists()
    out = export_peft(expert, tmp_path / "st", format="supertuning")
    assert torch.equal(import_peft(out).deltas["model.layers.0.self_attn.k_proj.weight"].indices, indices)


# --- refusals ----------


def test_pickle_only_adapter_is_refused(base_dir, tmp_path):
    peft_model = get_peft_model(_load(base_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert (tmp_path / "adapter" / "adapter_model.bin").is_file()
    with pytest.raises(HubError, match="never unpickles"):
        import_peft(tmp_path / "adapter")


def test_dora_adapter_is_refused(base_dir, tmp_path):
    peft_model = get_peft_model(_load(base_dir), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(HubError, match="use_dora.*DoRA"):
        import_peft(tmp_path / "adapter")


def test_unknown_peft_type_is_refused(base_dir, tmp_path):
    from peft import IA3Config

    get_peft_model(
        _load(base_dir), IA3Config(target_modules=["k_proj"], feedforward_modules=[])
    ).save_pretrained(tmp_path / "ia3")
    with pytest.raises(HubError, match="peft_type 'IA3' is not supported"):
        import_peft(tmp_path / "ia3")
