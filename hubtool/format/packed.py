"""pack / unpack: an in-memory Expert <-> one self-describing .safetensors file (docs/format.md).

Tensors per adapted weight W [out, in] (W is the base model's parameter name):
  sparse   W.idx  uint8 [bytes]        encoded flat positions (hubtool.format.encodings)
           W.val  value dtype [nnz]
  block    W.idx  uint8 [bytes]        encoded tile positions on the ceil(out/B) x ceil(in/B) grid
           W.val  value dtype [n_tiles, B, B]
  lora     W.lora_A [r, in], W.lora_B [out, r]   (scale in the metadata)
  dense    W.delta [out, in]
Both directions run the same checks, so a file that pack wrote always unpacks, and nothing invalid
is ever written. The container is written with a fixed key order (_safetensors_bytes): the same
expert always gives the same bytes, and so the same content hash in the blob store.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

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
from hubtool.format.types import BlockDelta, Delta, DenseDelta, Expert, LoraDelta, SparseDelta

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_ST_DTYPES = {torch.uint8: "U8", torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_DELTA_NAMES = {SparseDelta: "sparse", BlockDelta: "block", LoraDelta: "lora", DenseDelta: "dense"}


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
            if deltas[name].nnz != info["nnz"]:
                raise FormatError(f"nnz: metadata says {info['nnz']}, the tensors hold {deltas[name].nnz}")
        except FormatError as err:
            raise FormatError(f"{where}: {name}: {err}") from None
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


# --- one weight ------------------------------------------------------------------------------------


def _pack_delta(
    name: str, delta: Delta, kind: str, value_dtype: str, encoding: str, tensors: dict[str, torch.Tensor]
) -> dict:
    """Adds the weight's tensors to `tensors` and returns its metadata entry."""
    delta_name = _DELTA_NAMES.get(type(delta))
    if delta_name not in DELTAS_OF_KIND[kind]:
        raise FormatError(f"a {kind} expert cannot hold a {type(delta).__name__}")
    shape = _check_shape(delta.shape)
    dtype = _TORCH_DTYPES[value_dtype]
    info: dict = {
        "delta": delta_name,
        "shape": list(shape),
        "nnz": delta.nnz,
        "fingerprint": delta.fingerprint,
    }
    if isinstance(delta, (SparseDelta, BlockDelta)):
        positions = delta.indices if isinstance(delta, SparseDelta) else delta.tiles
        universe = shape[0] * shape[1] if isinstance(delta, SparseDelta) else delta.grid[0] * delta.grid[1]
        pos = _check_positions(positions, universe)
        if encoding == "auto":
            info["encoding"], payload = encodings.encode_best(pos, universe)
        else:
            info["encoding"], payload = encoding, encodings.encode(pos, universe, encoding)
        tensors[f"{name}.idx"] = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).copy())
    if isinstance(delta, SparseDelta):
        tensors[f"{name}.val"] = _values(delta.values, (delta.nnz,), dtype, "values")
    elif isinstance(delta, BlockDelta):
        b = info["block_size"] = int(delta.block_size)
        tensors[f"{name}.val"] = _values(delta.values, (delta.tiles.numel(), b, b), dtype, "values")
    elif isinstance(delta, LoraDelta):
        rank = int(delta.A.shape[0]) if delta.A.dim() == 2 else -1
        tensors[f"{name}.lora_A"] = _values(delta.A, (rank, shape[1]), dtype, "lora A")
        tensors[f"{name}.lora_B"] = _values(delta.B, (shape[0], rank), dtype, "lora B")
        info["scale"] = float(delta.scale)
    else:
        tensors[f"{name}.delta"] = _values(delta.values, shape, dtype, "values")
    return info


def _unpack_delta(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> Delta:
    """The weight's delta from its (header-checked) tensors; decodes and checks positions and values."""
    shape, fp = tuple(info["shape"]), info["fingerprint"]
    if info["delta"] == "sparse":
        values = _finite(tensors[f"{name}.val"], "values")
        indices = _decode(tensors[f"{name}.idx"], shape[0] * shape[1], values.shape[0], info["encoding"])
        return SparseDelta(shape, indices, values, fp)
    if info["delta"] == "block":
        b = info["block_size"]
        values = _finite(tensors[f"{name}.val"], "values")  # [n_tiles, B, B]
        grid_cells = -(-shape[0] // b) * -(-shape[1] // b)
        tiles = _decode(tensors[f"{name}.idx"], grid_cells, values.shape[0], info["encoding"])
        return BlockDelta(shape, b, tiles, values, fp)
    if info["delta"] == "lora":
        a, b = (_finite(tensors[f"{name}.lora_{x}"], f"lora {x}") for x in "AB")
        return LoraDelta(shape, a, b, float(info["scale"]), fp)
    return DenseDelta(shape, _finite(tensors[f"{name}.delta"], "values"), fp)


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
    if not bool(torch.isfinite(t).all()):
        raise FormatError(f"{what}: {int((~torch.isfinite(t)).sum())} entries are NaN or infinite")
    return t


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
