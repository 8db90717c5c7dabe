"""The delta data model: one battery over every kind of the registry (hubtool.delta.kinds), the tile grid,
the lazy reader, the packed headers against schema/expert.schema.json, and version-1 files."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch

from hubtool.delta import (
    DELTA_KINDS,
    DELTA_TYPES,
    EXPERT_KINDS,
    KIND,
    BlockSparseDelta,
    Expert,
    FullDelta,
    LoraDelta,
    SparseDelta,
    TileGrid,
)
from hubtool.delta.kinds import check_table, get_kind
from hubtool.errors import FormatError, HubError
from hubtool.format import ExpertReader, pack, read_header, unpack

SHAPE = (20, 36)  # not a multiple of the tile size: edge tiles stick out


def make(kind: str, seed: int = 0, shape: tuple[int, int] = SHAPE):
    gen = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    if kind == "sparse":
        idx = torch.randperm(n, generator=gen)[: n // 10].sort().values
        return SparseDelta(shape, idx, torch.randn(idx.numel(), generator=gen))
    if kind == "block-sparse":
        cells = TileGrid(shape, 8).cells
        tiles = torch.randperm(cells, generator=gen)[: cells // 3].sort().values
        return BlockSparseDelta(shape, 8, tiles, torch.randn(tiles.numel(), 8, 8, generator=gen))
    if kind == "lora":
        return LoraDelta(shape, torch.randn(2, shape[1], generator=gen), torch.randn(shape[0], 2, generator=gen), 0.5)
    return FullDelta(shape, torch.randn(shape, generator=gen))


def test_every_kind_has_a_type():
    assert set(DELTA_TYPES) == set(DELTA_KINDS)
    assert all(DELTA_TYPES[k].kind == k for k in DELTA_KINDS)


def test_every_table_keyed_by_kind_is_the_registrys():
    """The one list: each place that varies by kind reads the registry or covers exactly its kinds."""
    from hubtool.experiment import presets
    from hubtool.format import header, packed
    from hubtool.sparse.adapters import LAYER_FACTORIES
    from hubtool.train import DEFAULT_LR, MASKED_KINDS

    assert DELTA_KINDS == ("sparse", "block-sparse", "lora", "full")
    for table in (DELTA_TYPES, packed.CODECS, header._SPECS, LAYER_FACTORIES, DEFAULT_LR):
        assert tuple(table) == DELTA_KINDS
    for kind, spec in KIND.items():
        assert spec.delta_type is DELTA_TYPES[kind] and spec.delta_type.is_sparse == spec.sparse
        assert presets.KINDS[kind].lr == spec.lr and presets.KINDS[kind].method == kind
    assert header.DELTA_KINDS == DELTA_KINDS and header.KINDS == EXPERT_KINDS == (*DELTA_KINDS, "merged")
    assert set(MASKED_KINDS) == {"sparse", "block-sparse", "merged"}
    assert DEFAULT_LR == {"sparse": 1e-4, "block-sparse": 1e-4, "lora": 1e-4, "full": 3e-5}
    # a table that misses a kind (or names one the registry lacks) refuses to load, naming both
    with pytest.raises(RuntimeError, match=r"somewhere: no entry for kinds \['full'\]; entries for unknown kinds \['dora'\]"):
        check_table({"sparse": 1, "block-sparse": 1, "lora": 1, "dora": 1}, "somewhere")
    with pytest.raises(HubError, match="--kind 'dora': expected one of sparse, block-sparse, lora, full"):
        get_kind("dora")


def test_the_registry_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, hubtool.delta.kinds, hubtool.format.header, hubtool.sparse.config, hubtool.cli.train; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("kind", DELTA_KINDS)
def test_entries_and_add_agree_with_dense(kind):
    delta = make(kind)
    dense = delta.to_dense()
    assert dense.shape == SHAPE
    pos, vals = delta.entries()
    assert torch.all(pos[1:] > pos[:-1])  # sorted, unique
    rebuilt = torch.zeros(SHAPE[0] * SHAPE[1])
    rebuilt[pos] = vals
    torch.testing.assert_close(rebuilt.view(SHAPE), dense)
    if delta.is_sparse:
        assert pos.numel() == delta.nnz  # only what is stored
    weight = torch.randn(SHAPE)
    expected = weight + 0.7 * dense
    delta.add_to_(weight, 0.7)
    torch.testing.assert_close(weight, expected)


def test_block_nnz_counts_only_inside_entries():
    delta = make("block-sparse")
    assert delta.nnz == int((delta.to_dense() != 0).sum())  # randn values are never exactly 0


@pytest.mark.parametrize("shape,block", [((20, 36), 8), ((16, 16), 4), ((5, 3), 16)])
def test_tile_grid_round_trip(shape, block):
    grid = TileGrid(shape, block)
    t = torch.randn(shape)
    tiles = grid.to_tiles(t)
    assert tiles.shape == (grid.cells, block, block)
    torch.testing.assert_close(grid.from_tiles(tiles), t)
    pos, inside = grid.positions(torch.arange(grid.cells))
    assert sorted(pos[inside].tolist()) == list(range(shape[0] * shape[1]))
    assert int(grid.inside_counts(torch.arange(grid.cells)).sum()) == shape[0] * shape[1]


def _expert(kind: str) -> Expert:
    deltas = {f"model.layers.{i}.self_attn.q_proj.weight": make(kind, seed=i) for i in range(3)}
    return Expert(name="e", task="t", kind=kind, base_model="tiny", deltas=deltas, value_dtype="float32")


@pytest.mark.parametrize("kind", DELTA_KINDS)
def test_reader_reads_one_weight_like_unpack(tmp_path, kind):
    path = tmp_path / "e.safetensors"
    pack(_expert(kind), path)
    whole = unpack(path)
    reader = ExpertReader(path)
    assert list(reader.weights) == sorted(whole.deltas)
    for name, delta in reader.iter_deltas(threads=2):
        torch.testing.assert_close(delta.to_dense(), whole.deltas[name].to_dense())
        assert delta.kind == kind
    one = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(reader.read(one).to_dense(), whole.deltas[one].to_dense())
    with pytest.raises(FormatError, match="not in this expert"):
        reader.read("nope.weight")


def test_reader_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "e.safetensors"
    pack(_expert("sparse"), path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(FormatError):
        ExpertReader(path)


def _rewrite_metadata(path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header["__metadata__"])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


@pytest.mark.parametrize("kind,old_kind,old_delta", [("full", "full-delta", "dense"), ("block-sparse", "block-sparse", "block")])
def test_version_1_files_with_the_old_names_still_read(tmp_path, kind, old_kind, old_delta):
    path = tmp_path / "old.safetensors"
    pack(_expert(kind), path)
    assert read_header(path)["format_version"] == "2"

    def edit(meta, version="1"):
        meta["format_version"] = version
        meta["kind"] = old_kind
        weights = json.loads(meta["weights"])
        for info in weights.values():
            info["delta"] = old_delta
        meta["weights"] = json.dumps(weights)

    _rewrite_metadata(path, edit)
    header = read_header(path)
    assert header["kind"] == kind and header["format_version"] == "1"
    assert {w["delta"] for w in header["weights"].values()} == {kind}
    assert all(d.kind == kind for d in unpack(path).deltas.values())
    validate(header, SCHEMA)  # decoded, a version-1 header is a valid one
    # a version-2 file speaks the registry's names only
    _rewrite_metadata(path, lambda meta: edit(meta, "2"))
    with pytest.raises(FormatError, match=r"__metadata__\.(kind|weights\[.*\]\.delta)"):
        read_header(path)


# --- the JSON schema (jsonschema is not a dependency: a checker for the keywords the schema uses) ---------

SCHEMA = json.loads((Path(__file__).parent.parent / "schema" / "expert.schema.json").read_text())
_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "null": type(None)}


def _errors(value, schema, at="$"):
    """The JSON-schema violations of `value` (draft 2020-12, the keywords expert.schema.json uses)."""
    out = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if isinstance(value, bool) or not any(isinstance(value, _TYPES[t]) for t in types):
            return [f"{at}: {value!r} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{at}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            out.append(f"{at}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{at}: {value!r} does not match {schema['pattern']}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        out.append(f"{at}: {value} out of bounds")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            out.append(f"{at}: {len(value)} items")
        for i, item in enumerate(value):
            out += _errors(item, schema.get("items", {}), f"{at}[{i}]")
    if isinstance(value, dict):
        out += [f"{at}.{k}: missing" for k in schema.get("required", ()) if k not in value]
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for k, v in value.items():
            sub = props.get(k, extra)
            if sub is False:
                out.append(f"{at}.{k}: not allowed")
            elif isinstance(sub, dict):
                out += _errors(v, sub, f"{at}.{k}")
    if "anyOf" in schema and all(_errors(value, sub, at) for sub in schema["anyOf"]):
        out.append(f"{at}: matches none of anyOf")
    for sub in schema.get("allOf", ()):
        if "if" in sub and not _errors(value, sub["if"], at):
            out += _errors(value, sub["then"], at)
        elif "if" not in sub:
            out += _errors(value, sub, at)
    return out


def validate(value, schema) -> None:
    problems = _errors(value, schema)
    assert not problems, problems


def test_the_schema_checker_can_fail():
    good = {"format": "hubtool.expert", "format_version": "2", "name": "e", "task": "t", "kind": "lora",
            "base_model": "b", "value_dtype": "float32", "weights": {"w": {"delta": "lora", "shape": [2, 3],
            "nnz": 10, "fingerprint": None, "scale": 1.0}}}  # fmt: skip
    validate(good, SCHEMA)
    for path, bad in ((("kind",), "full-delta"), (("weights", "w", "delta"), "dense"), (("format_version",), "3"),
                      (("weights", "w", "shape"), [2]), (("weights", "w", "fingerprint"), "XYZ")):
        broken = json.loads(json.dumps(good))
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bad
        assert _errors(broken, SCHEMA), path
    del good["weights"]["w"]["scale"]  # lora needs its scale
    assert _errors(good, SCHEMA)


def test_the_schemas_kinds_are_the_registrys():
    props = SCHEMA["properties"]
    assert props["kind"]["enum"] == list(EXPERT_KINDS)
    assert props["weights"]["additionalProperties"]["properties"]["delta"]["enum"] == list(DELTA_KINDS)
    assert "2" in props["format_version"]["enum"]
    conditions = SCHEMA["properties"]["weights"]["additionalProperties"]["allOf"]
    assert {c["if"]["properties"]["delta"]["const"] for c in conditions} <= set(DELTA_KINDS)
    spec = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    assert "# The packed expert format, version 2" in spec
    for kind in EXPERT_KINDS:
        assert f"`{kind}`" in spec
    row = next(line for line in spec.splitlines() if line.startswith("| `kind`"))
    assert re.findall(r"`([a-z-]+)`", row) == ["kind", *EXPERT_KINDS]


@pytest.mark.parametrize("kind", EXPERT_KINDS)
def test_written_headers_of_every_kind_fit_the_schema(tmp_path, kind):
    if kind == "merged":  # a merge holds whatever its parents held: one weight of each kind
        deltas = {f"model.layers.{i}.mlp.up_proj.weight": make(k, seed=i) for i, k in enumerate(DELTA_KINDS)}
        expert = Expert(name="m", task="t", kind="merged", base_model="tiny", deltas=deltas, keep_ratio=0.1,
                        parents=["a@1", {"ref": "b@2", "role": "avoid", "weight": None}], metrics={"t": {"acc": 1.0}})
    else:
        expert = _expert(kind)
    path = tmp_path / "e.safetensors"
    pack(expert, path)
    header = read_header(path)
    assert header["format_version"] == "2" and header["kind"] == kind
    validate(header, SCHEMA)
    raw = json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])["__metadata__"]
    assert raw["format_version"] == "2" and raw["kind"] == kind  # as stored, not only as decoded
