"""pack / unpack: an in-memory Expert <-> one self-describing .safetensors file (docs/format.md).

Tensors per adapted weight W [out, in] (W is the base model's parameter name):
  sparse        W.idx  uint8 [bytes]        encoded flat positions (hubtool.format.encodings)
                W.val  value dtype [nnz]
  block-sparse  W.idx  uint8 [bytes]        encoded tile positions on the ceil(out/B) x ceil(in/B) grid
                W.val  value dtype [n_tiles, B, B]
  lora          W.lora_A [r, in], W.lora_B [out, r]   (scale in the metadata)
  full          W.delta [out, in]
One (writer, reader) pair per kind of the registry (hubtool.delta.kinds), in CODECS.
Both directions run the same checks, so a file that pack wrote always unpacks, and nothing invalid
is ever written. The container is written with a fixed key order (_safetensors_bytes): the same
expert always gives the same bytes, and so the same content hash in the blob store.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

from hubtool.delta import BlockSparseDelta, Delta, Expert, FullDelta, LoraDelta, SparseDelta, TileGrid
from hubtool.delta.kinds import check_table
from hubtool.errors import FormatError
from hubtool.fileio import atomic_write
from hubtool.format import encodings
from hubtool.format.header import (
    DELTAS_OF_KIND,
    ENCODINGS,
    FORMAT_NAME,
    FORMAT_VERSION,
    VALUE_DTYPES,
    header_from_bytes,
)

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_ST_DTYPES = {torch.uint8: "U8", torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def pack(
    expert: Expert, path: str | os.PathLike[str], *, value_dtype: str | None = None, encoding: str = "auto"
) -> int:
    """Write `expert` to `path` atomically; returns the bytes written. See pack_bytes."""
    data = pack_bytes(expert, value_dtype=value_dtype, encoding=encoding)
    with atomic_write(path) as f:
        f.write(data)
    return len(data)


def pack_bytes(expert: Expert, *, value_dtype: str | None = None, encoding: str = "auto") -> bytes:
    """The packed file's bytes. value_dtype overrides expert.value_dtype (bfloat16|float16|float32);
    encoding is "auto" (smallest per tensor) or one of ENCODINGS for every position tensor."""
    value_dtype = value_dtype or expert.value_dtype
    where = f"expert {expert.name!r}"
    if value_dtype not in VALUE_DTYPES:
        raise FormatError(
            f"{where}: value_dtype: expected one of {', '.join(VALUE_DTYPES)}, got {value_dtype!r}"
        )
    if encoding != "auto" and encoding not in ENCODINGS:
        raise FormatError(
            f"{where}: encoding: expected auto or one of {', '.join(ENCODINGS)}, got {encoding!r}"
        )
    if expert.kind not in DELTAS_OF_KIND:
        raise FormatError(f"{where}: kind: expected one of {', '.join(DELTAS_OF_KIND)}, got {expert.kind!r}")
    tensors: dict[str, torch.Tensor] = {}
    weights: dict[str, dict] = {}
    for name in sorted(expert.deltas):
        try:
            weights[name] = _pack_delta(
                name, expert.deltas[name], expert.kind, value_dtype, encoding, tensors
            )
        except FormatError as err:
            raise FormatError(f"{where}: {name}: {err}") from None
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": expert.name,
        "task": expert.task,
        "kind": expert.kind,
        "base_model": expert.base_model,
        "value_dtype": value_dtype,
        "nnz": str(sum(w["nnz"] for w in weights.values())),
        "weights": _json(weights),
        "config": _json(expert.config),
        "metrics": _json(expert.metrics),
        "parents": _json(expert.parents),
    }
    optional = {
        "base_revision": expert.base_revision,
        "targets": expert.targets,
        "keep_ratio": expert.keep_ratio,
    }
    metadata.update({k: str(v) for k, v in optional.items() if v is not None})
    return _safetensors_bytes(tensors, metadata)


def unpack(source: str | os.PathLike[str] | bytes) -> Expert:
    """Read and validate a packed expert (a path or the file's bytes). Raises FormatError naming
    the file and the field. Only safetensors is parsed: nothing is ever unpickled."""
    where = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise FormatError(f"{where}: cannot read: {err.strerror}") from None
    meta = header_from_bytes(data, where)
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as err:
        raise FormatError(f"{where}: not a valid safetensors file: {err}") from None
    deltas: dict[str, Delta] = {}
    for name, info in meta["weights"].items():
        try:
            deltas[name] = _unpack_delta(name, info, tensors)
        except FormatError as err:
            raise FormatError(f"{where}: {name}: {err}") from None
    return _expert(meta, deltas)


def _expert(meta: dict, deltas: dict[str, Delta]) -> Expert:
    """An Expert from a checked header's metadata and its decoded deltas."""
    return Expert(
        name=meta["name"],
        task=meta["task"],
        kind=meta["kind"],
        base_model=meta["base_model"],
        deltas=deltas,
        base_revision=meta["base_revision"],
        keep_ratio=meta["keep_ratio"],
        value_dtype=meta["value_dtype"],
        targets=meta["targets"],
        config=meta["config"],
        metrics=meta["metrics"],
        parents=meta["parents"],
    )


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file written with a fixed key order, so equal experts give equal bytes (the
    safetensors library writes __metadata__ in hash-map order, which changes from call to call).

    Tensors go widest dtype first, then by name, so every tensor starts aligned to its item size
    (the header is padded to 8 bytes, as safetensors does). Assumes a little-endian host.
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors, key=lambda t: (-tensors[t].element_size(), t)):
        t = tensors[name]
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


# --- one weight: one (pack, unpack) pair per delta kind ---------------------------------------------
# Every writer adds the weight's tensors to `tensors` and its kind-specific fields to `info`; every
# reader gets the header-checked tensors and returns the delta, decoding and checking positions.


def _pack_delta(
    name: str, delta: Delta, kind: str, value_dtype: str, encoding: str, tensors: dict[str, torch.Tensor]
) -> dict:
    """Adds the weight's tensors to `tensors` and returns its metadata entry."""
    codec = CODECS.get(getattr(delta, "kind", None))
    if codec is None or delta.kind not in DELTAS_OF_KIND[kind]:
        raise FormatError(f"a {kind} expert cannot hold a {type(delta).__name__}")
    writer = codec[0]
    shape = _check_shape(delta.shape)
    info: dict = {"delta": delta.kind, "shape": list(shape), "nnz": delta.nnz, "fingerprint": delta.fingerprint}
    writer(name, delta, shape, _TORCH_DTYPES[value_dtype], encoding, info, tensors)
    return info


def _positions(name: str, positions: torch.Tensor, universe: int, encoding: str, info: dict, tensors: dict) -> None:
    pos = _check_positions(positions, universe)
    if encoding == "auto":
        info["encoding"], payload = encodings.encode_best(pos, universe)
    else:
        info["encoding"], payload = encoding, encodings.encode(pos, universe, encoding)
    tensors[f"{name}.idx"] = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).copy())


def _write_sparse(name, delta: SparseDelta, shape, dtype, encoding, info, tensors) -> None:
    _positions(name, delta.indices, shape[0] * shape[1], encoding, info, tensors)
    tensors[f"{name}.val"] = _values(delta.values, (delta.nnz,), dtype, "values")


def _write_block(name, delta: BlockSparseDelta, shape, dtype, encoding, info, tensors) -> None:
    _positions(name, delta.tiles, delta.grid.cells, encoding, info, tensors)
    b = info["block_size"] = int(delta.block_size)
    tensors[f"{name}.val"] = _values(delta.values, (delta.tiles.numel(), b, b), dtype, "values")


def _write_lora(name, delta: LoraDelta, shape, dtype, encoding, info, tensors) -> None:
    rank = int(delta.A.shape[0]) if delta.A.dim() == 2 else -1
    tensors[f"{name}.lora_A"] = _values(delta.A, (rank, shape[1]), dtype, "lora A")
    tensors[f"{name}.lora_B"] = _values(delta.B, (shape[0], rank), dtype, "lora B")
    if not math.isfinite(float(delta.scale)):
        raise FormatError(f"scale: expected a finite number, got {delta.scale}")
    info["scale"] = float(delta.scale)


def _write_full(name, delta: FullDelta, shape, dtype, encoding, info, tensors) -> None:
    tensors[f"{name}.delta"] = _values(delta.values, shape, dtype, "values")


def _read_sparse(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> SparseDelta:
    shape = tuple(info["shape"])
    values = _finite(tensors[f"{name}.val"], "values")
    indices = _decode(tensors[f"{name}.idx"], shape[0] * shape[1], values.shape[0], info["encoding"])
    return SparseDelta(shape, indices, values, info["fingerprint"])


def _read_block(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> BlockSparseDelta:
    shape, b = tuple(info["shape"]), info["block_size"]
    values = _finite(tensors[f"{name}.val"], "values")  # [n_tiles, B, B]
    tiles = _decode(tensors[f"{name}.idx"], TileGrid(shape, b).cells, values.shape[0], info["encoding"])
    return BlockSparseDelta(shape, b, tiles, values, info["fingerprint"])


def _read_lora(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> LoraDelta:
    a, b = (_finite(tensors[f"{name}.lora_{x}"], f"lora {x}") for x in "AB")
    return LoraDelta(tuple(info["shape"]), a, b, float(info["scale"]), info["fingerprint"])


def _read_full(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> FullDelta:
    return FullDelta(tuple(info["shape"]), _finite(tensors[f"{name}.delta"], "values"), info["fingerprint"])


# kind -> (writer, reader); one entry per kind of the registry, checked at import.
CODECS = {
    "sparse": (_write_sparse, _read_sparse),
    "block-sparse": (_write_block, _read_block),
    "lora": (_write_lora, _read_lora),
    "full": (_write_full, _read_full),
}
check_table(CODECS, "hubtool.format.packed")


def _unpack_delta(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> Delta:
    """The weight's delta from its (header-checked) tensors; decodes and checks positions and values."""
    delta = CODECS[info["delta"]][1](name, info, tensors)
    if delta.nnz != info["nnz"]:
        raise FormatError(f"nnz: metadata says {info['nnz']}, the tensors hold {delta.nnz}")
    return delta


def _decode(payload: torch.Tensor, universe: int, k: int, encoding: str) -> torch.Tensor:
    try:
        return torch.from_numpy(encodings.decode(payload.numpy().tobytes(), universe, k, encoding))
    except FormatError as err:
        raise FormatError(f"positions ({encoding}): {err}") from None


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or not all(isinstance(x, int) and x > 0 for x in shape):
        raise FormatError(f"shape: expected (out, in) positive integers, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_positions(positions: torch.Tensor, universe: int) -> np.ndarray:
    if positions.dim() != 1 or positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise FormatError(
            f"positions: expected a 1-D integer tensor, got {positions.dtype} {list(positions.shape)}"
        )
    pos = positions.detach().cpu().to(torch.int64).numpy()
    try:
        encodings.check_positions(pos, universe)
    except FormatError as err:
        raise FormatError(f"positions: {err}") from None
    return pos


def _values(t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, what: str) -> torch.Tensor:
    """`t` cast to the value dtype, contiguous, on the CPU, checked for shape and finiteness."""
    if tuple(t.shape) != tuple(shape):
        raise FormatError(f"{what}: shape {list(t.shape)}, expected {list(shape)}")
    if not t.dtype.is_floating_point:
        raise FormatError(f"{what}: dtype {t.dtype}, expected a floating-point tensor")
    return _finite(t.detach().to(device="cpu", dtype=dtype).contiguous(), what)


def _finite(t: torch.Tensor, what: str) -> torch.Tensor:
    # max(|t|) is NaN if any entry is NaN and inf if any is infinite: one reduction instead of a bool
    # tensor the size of t (30x faster on bf16 values); count only when something is wrong.
    if t.numel() and not bool(torch.isfinite(t.abs().max())):
        raise FormatError(f"{what}: {int((~torch.isfinite(t)).sum())} entries are NaN or infinite")
    return t


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- reading one weight at a time ------------------------------------------------------------------

_SUFFIXES = ("idx", "val", "lora_A", "lora_B", "delta")
_FROM_ST = {"U8": torch.uint8, "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


class ExpertReader:
    """A packed expert read lazily, one weight at a time: the header is parsed and checked once, then
    `read(weight)` seeks to that weight's tensors (the safetensors offsets) and decodes only them.

        reader = ExpertReader(path)
        reader.weights                 # {weight name: its header entry (delta, shape, nnz, ...)}
        delta = reader.read("model.layers.0.self_attn.q_proj.weight")
        for name, delta in reader.iter_deltas(names, threads=2): ...   # decoded ahead, in order

    What compose streams on: memory holds the current weight's entries, never the whole expert.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from hubtool.format.header import read_header

        self.path = Path(path)
        self.header = read_header(self.path)  # validates the whole table; raises FormatError
        with self.path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        self._data_start = 8 + n
        self.weights: dict[str, dict] = self.header["weights"]

    def tensors_of(self, weight: str) -> dict[str, torch.Tensor]:
        """The raw stored tensors of one weight ({"<weight>.val": ..., ...}), read with one seek each."""
        table = self.header["tensors"]
        out = {}
        with self.path.open("rb") as f:
            for suffix in _SUFFIXES:
                key = f"{weight}.{suffix}"
                entry = table.get(key)
                if entry is None:
                    continue
                begin, end = entry["data_offsets"]
                f.seek(self._data_start + begin)
                raw = bytearray(f.read(end - begin))
                if len(raw) != end - begin:
                    raise FormatError(f"{self.path}: tensor {key}: file ends inside its payload")
                dtype = _FROM_ST[entry["dtype"]]
                t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                out[key] = t.reshape(entry["shape"])
        return out

    def read(self, weight: str) -> Delta:
        info = self.weights.get(weight)
        if info is None:
            raise FormatError(f"{self.path}: weight {weight} is not in this expert")
        try:
            return _unpack_delta(weight, info, self.tensors_of(weight))
        except FormatError as err:
            raise FormatError(f"{self.path}: {weight}: {err}") from None

    def iter_deltas(self, weights: list[str] | None = None, *, threads: int = 2):
        """(name, delta) for each weight in order, decoded up to `threads` weights ahead."""
        names = list(self.weights) if weights is None else list(weights)
        if threads <= 1 or len(names) <= 1:
            for name in names:
                yield name, self.read(name)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            pending = [pool.submit(self.read, n) for n in names[:threads]]
            for i, name in enumerate(names):
                delta = pending[i].result()
                if i + threads < len(names):
                    pending.append(pool.submit(self.read, names[i + threads]))
                pending[i] = None  # the delta is the caller's now
                yield name, delta

    def expert(self, weights: list[str] | None = None) -> Expert:
        """The expert with the given weights (default all) decoded; the metadata is the file's."""
        return _expert(self.header, dict(self.iter_deltas(weights, threads=1)))
