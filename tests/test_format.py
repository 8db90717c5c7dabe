"""The packed format: round trips (property test), every validation error, the header reader."""

from __future__ import annotations

import json
import math
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubtool.errors import FormatError
from hubtool.format import (
    ENCODINGS,
    KINDS,
    BlockSparseDelta,
    Expert,
    FullDelta,
    LoraDelta,
    SparseDelta,
    fingerprint,
    pack,
    pack_bytes,
    read_header,
    unpack,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ROOT = Path(__file__).resolve().parents[1]

# --- building experts ------------------------------------------------------------------------------


@st.composite
def deltas(draw, delta_type: str, shape: tuple[int, int]):
    seed = draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    rows, cols = shape
    fp = draw(st.one_of(st.none(), st.text("0123456789abcdef", min_size=16, max_size=16)))
    if delta_type == "sparse":
        n = rows * cols
        ratio = draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0]))
        k = min(n, round(ratio * n))
        indices = torch.randperm(n, generator=gen)[:k].sort().values
        edge = draw(st.sampled_from(["none", "first", "last", "both"]))  # first/last position kept
        extra = {"none": [], "first": [0], "last": [n - 1], "both": [0, n - 1]}[edge]
        indices = torch.unique(torch.cat([indices, torch.tensor(extra, dtype=torch.int64)]))
        return SparseDelta(shape, indices, torch.randn(indices.numel(), generator=gen), fp)
    if delta_type == "block-sparse":
        b = draw(st.sampled_from([1, 2, 4, 16]))
        cells = -(-rows // b) * -(-cols // b)
        tiles = torch.randperm(cells, generator=gen)[: draw(st.integers(0, cells))].sort().values
        return BlockSparseDelta(shape, b, tiles, torch.randn(tiles.numel(), b, b, generator=gen), fp)
    if delta_type == "lora":
        r = draw(st.integers(1, 4))
        a, b = torch.randn(r, cols, generator=gen), torch.randn(rows, r, generator=gen)
        return LoraDelta(shape, a, b, draw(st.sampled_from([0.5, 4.0])), fp)
    return FullDelta(shape, torch.randn(rows, cols, generator=gen), fp)


DELTA_OF_KIND = {"sparse": "sparse", "block-sparse": "block-sparse", "lora": "lora", "full": "full"}


@st.composite
def experts(draw) -> Expert:
    kind = draw(st.sampled_from(KINDS))
    n_weights = draw(st.integers(1, 3))
    found = {}
    for i in range(n_weights):
        shape = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
        delta_type = DELTA_OF_KIND.get(kind) or draw(st.sampled_from(["sparse", "block-sparse", "lora", "full"]))
        found[f"model.layers.{i}.self_attn.q_proj.weight"] = draw(deltas(delta_type, shape))
    return Expert(
        name=draw(st.text(min_size=1, max_size=12)),
        task=draw(st.sampled_from(["qa", "summarise", "ünïcode"])),
        kind=kind,
        base_model="smollm2-135m",
        deltas=found,
        base_revision=draw(st.one_of(st.none(), st.just("abc123"))),
        keep_ratio=draw(st.one_of(st.none(), st.sampled_from([0.05, 0.002]))),
        targets=draw(st.one_of(st.none(), st.just("qkv"))),
        config={"lr": 1e-4, "steps": 3},
        metrics={"qa": {"rougeL": 31.5}},
        parents=draw(st.sampled_from([[], ["a@1", "b@2"]])),
    )


def sparse_expert(n_rows: int = 24, n_cols: int = 16, k: int = 30, fp: str | None = None) -> Expert:
    gen = torch.Generator().manual_seed(0)
    indices = torch.randperm(n_rows * n_cols, generator=gen)[:k].sort().values
    delta = SparseDelta((n_rows, n_cols), indices, torch.randn(k, generator=gen), fp)
    return Expert("demo", "qa", "sparse", "tiny-base", {"w.weight": delta}, keep_ratio=0.08)


def same_delta(got, want, dtype: torch.dtype) -> None:
    """Unpacked `got` equals `want` with its values rounded to the file's value dtype."""
    assert type(got) is type(want) and tuple(got.shape) == tuple(want.shape)
    assert got.fingerprint == want.fingerprint and got.nnz == want.nnz
    if isinstance(want, SparseDelta):
        assert torch.equal(got.indices, want.indices.to(torch.int64))
        assert torch.equal(got.values, want.values.to(dtype))
    elif isinstance(want, BlockSparseDelta):
        assert got.block_size == want.block_size and torch.equal(got.tiles, want.tiles)
        assert torch.equal(got.values, want.values.to(dtype))
    elif isinstance(want, LoraDelta):
        assert got.scale == want.scale
        assert torch.equal(got.A, want.A.to(dtype)) and torch.equal(got.B, want.B.to(dtype))
    else:
        assert torch.equal(got.values, want.values.to(dtype))


# --- round trips -----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(experts(), st.sampled_from(["bfloat16", "float16", "float32"]), st.sampled_from(["auto", *ENCODINGS]))
def test_round_trip(expert: Expert, value_dtype: str, encoding: str) -> None:
    data = pack_bytes(expert, value_dtype=value_dtype, encoding=encoding)
    got = unpack(data)
    for field in (
        "name",
        "task",
        "kind",
        "base_model",
        "base_revision",
        "keep_ratio",
        "targets",
        "config",
        "metrics",
        "parents",
    ):
        assert getattr(got, field) == getattr(expert, field), field
    assert got.value_dtype == value_dtype
    assert list(got.deltas) == sorted(expert.deltas)
    for name, want in expert.deltas.items():
        same_delta(got.deltas[name], want, DTYPES[value_dtype])
    header = read_header(data)
    assert header["nnz"] == expert.nnz
    for name, info in header["weights"].items():
        if info["delta"] in ("sparse", "block-sparse"):
            assert info["encoding"] == encoding or encoding == "auto"
    assert pack_bytes(got, encoding=encoding) == data  # deterministic: same expert, same bytes


def test_pack_writes_atomically_and_returns_size(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "demo.safetensors"
    written = pack(sparse_expert(), path)
    assert written == path.stat().st_size
    assert [p.name for p in path.parent.iterdir()] == ["demo.safetensors"]  # no temp file left
    assert unpack(path).deltas["w.weight"].nnz == 30


def test_pack_value_dtype_defaults_to_bfloat16() -> None:
    header = read_header(pack_bytes(sparse_expert()))
    assert header["value_dtype"] == "bfloat16"
    assert header["tensors"]["w.weight.val"]["dtype"] == "BF16"


# --- the header reader -----------------------------------------------------------------------------


def test_read_header_does_not_import_torch_or_numpy(tmp_path: Path) -> None:
    path = tmp_path / "demo.safetensors"
    pack(sparse_expert(fp="0123456789abcdef"), path)
    code = (
        "import sys, json; from hubtool.format.header import read_header; h = read_header(sys.argv[1]); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'; "
        "print(json.dumps({k: h[k] for k in ('name', 'kind', 'nnz', 'keep_ratio', 'weights')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr
    header = json.loads(out.stdout)
    assert header["name"] == "demo" and header["kind"] == "sparse" and header["nnz"] == 30
    assert header["keep_ratio"] == 0.08
    assert header["weights"]["w.weight"]["fingerprint"] == "0123456789abcdef"
    assert header["weights"]["w.weight"]["shape"] == [24, 16]


def test_schema_lists_every_metadata_key() -> None:
    schema = json.loads((ROOT / "schema" / "expert.schema.json").read_text())
    expert = sparse_expert()
    expert.base_revision, expert.targets = "abc", "qkv"
    header = read_header(pack_bytes(expert))
    metadata_keys = set(header) - {"tensors"}
    assert metadata_keys == set(schema["properties"])
    assert set(schema["required"]) <= metadata_keys
    weight_schema = schema["properties"]["weights"]["additionalProperties"]
    assert set(header["weights"]["w.weight"]) <= set(weight_schema["properties"])


# --- validation errors -----------------------------------------------------------------------------


def split(data: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    """A packed file's raw `__metadata__` and tensors, to corrupt and re-save with `join`."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])["__metadata__"], safetensors.torch.load(data)


def join(metadata: dict, tensors: dict[str, torch.Tensor]) -> bytes:
    return safetensors.torch.save(tensors, metadata=metadata)


def with_weight_info(data: bytes, **changes) -> bytes:
    metadata, tensors = split(data)
    weights = json.loads(metadata["weights"])
    weights["w.weight"].update(changes)
    metadata["weights"] = json.dumps(weights)
    return join(metadata, tensors)


def raw_expert_bytes() -> bytes:
    return pack_bytes(sparse_expert(), encoding="raw")


def with_raw_positions(positions: list[int]) -> bytes:
    metadata, tensors = split(raw_expert_bytes())
    tensors["w.weight.idx"] = torch.frombuffer(
        bytearray(np.asarray(positions, "<i4").tobytes()), dtype=torch.uint8
    )
    return join(metadata, tensors)


def raises(data: bytes, tmp_path: Path, match: str) -> None:
    """unpack raises one FormatError naming the file and matching `match`."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match) as err:
        unpack(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_file(tmp_path: Path) -> None:
    data = raw_expert_bytes()
    raises(data[:-10], tmp_path, "outside the .*data section")
    raises(data[:100], tmp_path, "does not fit the file")
    raises(data[:5], tmp_path, "shorter than the 8-byte header length")


def test_wrong_format_version(tmp_path: Path) -> None:
    metadata, tensors = split(raw_expert_bytes())
    metadata["format_version"] = "3"
    raises(join(metadata, tensors), tmp_path, r"format_version: this hubtool reads versions 1, 2, got '3'")


def test_not_a_hubtool_expert(tmp_path: Path) -> None:
    plain = safetensors.torch.save({"w": torch.zeros(3)})  # e.g. a PEFT adapter: no __metadata__
    raises(plain, tmp_path, "__metadata__: missing")
    metadata, tensors = split(raw_expert_bytes())
    metadata["format"] = "peft"
    raises(join(metadata, tensors), tmp_path, r"format: expected 'hubtool.expert', got 'peft'")


def test_missing_metadata_field(tmp_path: Path) -> None:
    metadata, tensors = split(raw_expert_bytes())
    del metadata["task"]
    raises(join(metadata, tensors), tmp_path, r"__metadata__.task: missing")


@pytest.mark.parametrize(
    "positions, match",
    [
        ([3, 2] + list(range(10, 38)), "not sorted and unique: 3 then 2"),
        ([3, 3] + list(range(10, 38)), "not sorted and unique: 3 then 3"),
        (list(range(29)) + [24 * 16], r"out of range: expected \[0, 384\)"),
    ],
)
def test_bad_positions(tmp_path: Path, positions: list[int], match: str) -> None:
    raises(with_raw_positions(positions), tmp_path, match)


def test_nan_values(tmp_path: Path) -> None:
    metadata, tensors = split(raw_expert_bytes())
    tensors["w.weight.val"][4] = float("nan")
    raises(join(metadata, tensors), tmp_path, r"w.weight: values: 1 entries are NaN or infinite")


def test_wrong_dtype(tmp_path: Path) -> None:
    metadata, tensors = split(raw_expert_bytes())
    tensors["w.weight.val"] = tensors["w.weight.val"].to(torch.float16)  # metadata says bfloat16
    raises(join(metadata, tensors), tmp_path, r"tensor w.weight.val: dtype F16, expected BF16")
    metadata, tensors = split(raw_expert_bytes())
    tensors["w.weight.idx"] = tensors["w.weight.idx"].view(torch.int32)
    raises(join(metadata, tensors), tmp_path, r"dtype 'I32' is not one of")


def test_bad_shape(tmp_path: Path) -> None:
    raises(with_weight_info(raw_expert_bytes(), shape=[0, 16]), tmp_path, r"shape: expected \[out, in\]")
    raises(
        with_weight_info(raw_expert_bytes(), nnz=29), tmp_path, r"w.weight.val: shape \[30\], expected \[29\]"
    )
    lora = Expert(
        "l", "qa", "lora", "b", {"w.weight": LoraDelta((8, 6), torch.ones(2, 6), torch.ones(8, 2), 1.0)}
    )
    raises(
        with_weight_info(pack_bytes(lora), shape=[8, 5]),
        tmp_path,
        r"lora_A: shape \[2, 6\], expected \[2, 5\]",
    )


def test_payload_length_mismatch(tmp_path: Path) -> None:
    # one position too many for nnz in the raw payload
    raises(with_raw_positions(list(range(31))), tmp_path, r"raw payload is 124 bytes, expected 120")
    # a tensor table whose data_offsets disagree with dtype x shape
    data = raw_expert_bytes()
    assert data.count(b'"shape":[30]') == 1  # w.weight.val; same length, so offsets stay put
    raises(
        data.replace(b'"shape":[30]', b'"shape":[31]'),
        tmp_path,
        r"tensor w.weight.val: payload is 60 bytes, expected 62",
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_corrupt_position_payload(tmp_path: Path, encoding: str) -> None:
    metadata, tensors = split(pack_bytes(sparse_expert(), encoding=encoding))
    tensors["w.weight.idx"] = tensors["w.weight.idx"][:-1].clone()
    raises(join(metadata, tensors), tmp_path, rf"w.weight: positions \({encoding}\):")


def test_pickle_and_other_non_safetensors_files(tmp_path: Path) -> None:
    state = {"w": torch.zeros(3)}
    raises(pickle.dumps(state), tmp_path, "not a safetensors file|does not fit")
    torch_file = tmp_path / "model.pt"
    torch.save(state, torch_file)  # a zip of pickles
    raises(torch_file.read_bytes(), tmp_path, "not a safetensors file|does not fit")
    raises(b'{"just": "json"}', tmp_path, "not a safetensors file|does not fit")


def test_pack_refuses_invalid_deltas() -> None:
    expert = sparse_expert()
    delta = expert.deltas["w.weight"]
    delta.values[0] = math.inf
    with pytest.raises(FormatError, match=r"expert 'demo': w.weight: values: 1 entries are NaN or infinite"):
        pack_bytes(expert)
    delta.values[0] = 1.0
    delta.indices = delta.indices.flip(0)
    with pytest.raises(FormatError, match="not sorted"):
        pack_bytes(expert)
    delta.indices = delta.indices.flip(0)
    with pytest.raises(FormatError, match="value_dtype"):
        pack_bytes(expert, value_dtype="int8")
    with pytest.raises(FormatError, match="cannot hold a FullDelta"):
        pack_bytes(Expert("x", "qa", "sparse", "b", {"w": FullDelta((2, 2), torch.zeros(2, 2))}))
    big = SparseDelta((2, 2), torch.tensor([0]), torch.tensor([70000.0]))  # overflows float16
    with pytest.raises(FormatError, match="NaN or infinite"):
        pack_bytes(Expert("x", "qa", "sparse", "b", {"w": big}), value_dtype="float16")


def test_fingerprint_is_cheap_deterministic_and_dtype_independent() -> None:
    weight = torch.randn(300, 700, generator=torch.Generator().manual_seed(0))
    assert fingerprint(weight) == fingerprint(weight.clone())
    assert fingerprint(weight) == fingerprint(weight.to(torch.bfloat16))  # fp32 and bf16 copies agree
    assert fingerprint(weight) != fingerprint(weight.reshape(700, 300))  # shape is hashed
    changed = weight.clone()
    changed[::10] += 1.0  # a different checkpoint changes (sampled) entries
    assert fingerprint(weight) != fingerprint(changed)
    assert len(fingerprint(weight)) == 16
