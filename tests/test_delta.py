"""The delta data model: one battery over every delta kind, the tile grid, the lazy reader, legacy names."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from hubtool.delta import (
    DELTA_KINDS,
    DELTA_TYPES,
    BlockSparseDelta,
    Expert,
    FullDelta,
    LoraDelta,
    SparseDelta,
    TileGrid,
)
from hubtool.errors import FormatError
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
def test_files_with_the_old_names_still_read(tmp_path, kind, old_kind, old_delta):
    path = tmp_path / "old.safetensors"
    pack(_expert(kind), path)

    def edit(meta):
        meta["kind"] = old_kind
        weights = json.loads(meta["weights"])
        for info in weights.values():
            info["delta"] = old_delta
        meta["weights"] = json.dumps(weights)

    _rewrite_metadata(path, edit)
    header = read_header(path)
    assert header["kind"] == kind
    assert {w["delta"] for w in header["weights"].values()} == {kind}
    assert all(d.kind == kind for d in unpack(path).deltas.values())
