"""Read and validate a packed expert's header without torch or numpy (pure stdlib).

The catalog, `hub list` and `hub show` read experts through this module so they never pay for
importing torch. A safetensors file starts with an 8-byte little-endian header length N, then N
bytes of JSON: a tensor table {name: {dtype, shape, data_offsets}} and a `__metadata__` string map.
This module checks everything that can be checked from those bytes and the file size; the payloads
themselves (positions, finite values) are checked by hubtool.format.packed.unpack.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from hubtool.errors import FormatError

FORMAT_NAME = "hubtool.expert"
FORMAT_VERSION = "1"
# One vocabulary (the same words as hubtool.delta and `hub train --method`): expert kinds are the
# delta kinds plus "merged", which holds whatever its parents held.
DELTA_KINDS = ("sparse", "block-sparse", "lora", "full")
KINDS = (*DELTA_KINDS, "merged")
ENCODINGS = ("raw", "bitmask", "elias-fano", "golomb")
VALUE_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}  # ours -> safetensors
# kind -> the per-weight delta kinds it may hold
DELTAS_OF_KIND = {**{k: {k} for k in DELTA_KINDS}, "merged": set(DELTA_KINDS)}
# Names files written before the vocabulary was unified use; read as the new ones, never written.
LEGACY_KINDS = {"full-delta": "full"}
LEGACY_DELTAS = {"block": "block-sparse", "dense": "full"}
_ITEMSIZE = {"U8": 1, "BF16": 2, "F16": 2, "F32": 4}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit
_REQUIRED = ("format", "format_version", "name", "task", "kind", "base_model", "value_dtype", "weights")
_JSON_FIELDS = {"config": dict, "metrics": dict, "parents": list, "weights": dict}


def read_header(source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The validated metadata of a packed expert (a path, or the file's bytes).

    Returns the `__metadata__` fields with JSON fields decoded (config, metrics, parents, weights),
    keep_ratio as float and nnz as int (absent optional fields are None), plus "tensors": the
    safetensors tensor table {tensor name: {"dtype", "shape", "data_offsets"}}.
    "weights" maps each adapted weight name to {"delta", "shape", "nnz", "fingerprint", ...}.
    Raises FormatError naming the file and the field.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return header_from_bytes(bytes(source), "<bytes>")
    where = str(source)
    try:
        with Path(source).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) == 8:
                head += f.read(min(struct.unpack("<Q", head)[0], _MAX_HEADER))
    except OSError as err:
        raise FormatError(f"{where}: cannot read: {err.strerror}") from None
    return _parse(head, size, where)


def header_from_bytes(data: bytes, where: str) -> dict[str, Any]:
    """read_header for a file already in memory; `where` names it in errors."""
    return _parse(data[: 8 + _MAX_HEADER], len(data), where)


def _parse(head: bytes, size: int, where: str) -> dict[str, Any]:
    try:
        return _parse_checked(head, size)
    except FormatError as err:
        raise FormatError(f"{where}: {err}") from None


def _parse_checked(head: bytes, size: int) -> dict[str, Any]:
    if len(head) < 8:
        raise FormatError("not a safetensors file: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER or 8 + n > size:
        raise FormatError(
            f"header length {n} does not fit the file ({size} bytes): truncated or not safetensors"
        )
    try:
        table = json.loads(head[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError("not a safetensors file: header is not JSON") from None
    if not isinstance(table, dict):
        raise FormatError("not a safetensors file: header is not a JSON object")
    raw = table.pop("__metadata__", None)
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise FormatError("__metadata__: missing or not a string map; not a hubtool expert")
    meta = _decode_metadata(raw)
    _check_tensors(table, size - 8 - n)
    _check_weights(meta, table)
    meta["tensors"] = table
    return meta


def _decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT_NAME:
        raise FormatError(f"__metadata__.format: expected {FORMAT_NAME!r}, got {raw.get('format')!r}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise FormatError(
            f"__metadata__.format_version: this hubtool reads version {FORMAT_VERSION!r}, "
            f"got {raw.get('format_version')!r}"
        )
    for key in _REQUIRED:
        if key not in raw:
            raise FormatError(f"__metadata__.{key}: missing")
    meta: dict[str, Any] = dict(raw)
    for key, kind in _JSON_FIELDS.items():
        try:
            meta[key] = json.loads(raw[key]) if key in raw else kind()
        except json.JSONDecodeError:
            raise FormatError(f"__metadata__.{key}: not valid JSON") from None
        if not isinstance(meta[key], kind):
            raise FormatError(f"__metadata__.{key}: expected a JSON {kind.__name__}")
    for key, cast in (("keep_ratio", float), ("nnz", int)):
        try:
            meta[key] = cast(raw[key]) if key in raw else None
        except ValueError:
            raise FormatError(f"__metadata__.{key}: expected a number, got {raw[key]!r}") from None
    for key in ("base_revision", "targets"):
        meta.setdefault(key, None)
    meta["kind"] = LEGACY_KINDS.get(meta["kind"], meta["kind"])
    if meta["kind"] not in KINDS:
        raise FormatError(f"__metadata__.kind: expected one of {', '.join(KINDS)}, got {meta['kind']!r}")
    if meta["value_dtype"] not in VALUE_DTYPES:
        raise FormatError(
            f"__metadata__.value_dtype: expected one of {', '.join(VALUE_DTYPES)}, got {meta['value_dtype']!r}"
        )
    if meta["keep_ratio"] is not None and not 0.0 <= meta["keep_ratio"] <= 1.0:
        raise FormatError(f"__metadata__.keep_ratio: expected a number in [0, 1], got {meta['keep_ratio']}")
    return meta


def _check_tensors(table: dict[str, Any], data_size: int) -> None:
    """Each entry has a known dtype, a shape, and in-bounds offsets whose length fits dtype x shape."""
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"tensor {name}: expected {{dtype, shape, data_offsets}}")
        if entry["dtype"] not in _ITEMSIZE:
            raise FormatError(f"tensor {name}: dtype {entry['dtype']!r} is not one of {', '.join(_ITEMSIZE)}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
            raise FormatError(f"tensor {name}: shape and data_offsets must be lists of non-negative integers")
        begin, end = offsets
        if not begin <= end <= data_size:
            raise FormatError(
                f"tensor {name}: data_offsets {offsets} outside the {data_size}-byte data section"
            )
        if end - begin != _ITEMSIZE[entry["dtype"]] * _prod(shape):
            raise FormatError(
                f"tensor {name}: payload is {end - begin} bytes, expected "
                f"{_ITEMSIZE[entry['dtype']] * _prod(shape)} for {entry['dtype']} {shape}"
            )


def _check_weights(meta: dict[str, Any], table: dict[str, Any]) -> None:
    """Every weight's metadata is well-formed and its tensors are exactly those in the table."""
    expected: set[str] = set()
    allowed = DELTAS_OF_KIND[meta["kind"]]
    for name, info in meta["weights"].items():
        field = f"__metadata__.weights[{name}]"
        if not isinstance(info, dict):
            raise FormatError(f"{field}: expected a JSON object")
        delta = info.get("delta")
        if isinstance(delta, str):
            delta = info["delta"] = LEGACY_DELTAS.get(delta, delta)
        if delta not in allowed:
            raise FormatError(
                f"{field}.delta: a {meta['kind']} expert holds {sorted(allowed)}, got {delta!r}"
            )
        shape = info.get("shape")
        if not _ints(shape) or len(shape) != 2 or 0 in shape:
            raise FormatError(f"{field}.shape: expected [out, in] positive integers, got {shape!r}")
        if not _ints([info.get("nnz")]):
            raise FormatError(f"{field}.nnz: expected a non-negative integer, got {info.get('nnz')!r}")
        if info.get("fingerprint") is not None and not isinstance(info["fingerprint"], str):
            raise FormatError(f"{field}.fingerprint: expected a string or null")
        for tensor, (dtype, want) in _tensor_specs(name, info, field, table).items():
            got = table.get(tensor)
            if got is None:
                raise FormatError(f"tensor {tensor}: missing (needed by {field})")
            dtype = VALUE_DTYPES[meta["value_dtype"]] if dtype == _VALUE else dtype
            if got["dtype"] != dtype:
                raise FormatError(f"tensor {tensor}: dtype {got['dtype']}, expected {dtype}")
            if want is not None and got["shape"] != want:
                raise FormatError(f"tensor {tensor}: shape {got['shape']}, expected {want}")
            expected.add(tensor)
    extra = sorted(set(table) - expected)
    if extra:
        raise FormatError(f"tensor {extra[0]}: not described by __metadata__.weights")
    total = sum(info["nnz"] for info in meta["weights"].values())
    if meta["nnz"] is not None and meta["nnz"] != total:
        raise FormatError(f"__metadata__.nnz: {meta['nnz']} != {total}, the sum over weights")


_VALUE = "value"  # stands for the expert's value dtype in _tensor_specs


def _tensor_specs(
    name: str, info: dict[str, Any], field: str, table: dict[str, Any]
) -> dict[str, tuple[str, list[int] | None]]:
    """Tensor name -> (dtype, shape or None for a uint8 payload of any length) that a weight needs."""
    (rows, cols), delta, nnz = info["shape"], info["delta"], info["nnz"]
    if delta in ("sparse", "block-sparse") and info.get("encoding") not in ENCODINGS:
        raise FormatError(
            f"{field}.encoding: expected one of {', '.join(ENCODINGS)}, got {info.get('encoding')!r}"
        )
    if delta == "sparse":
        if nnz > rows * cols:
            raise FormatError(f"{field}.nnz: {nnz} is more than the {rows * cols} entries of the weight")
        return {f"{name}.idx": ("U8", None), f"{name}.val": (_VALUE, [nnz])}
    if delta == "block-sparse":
        b = info.get("block_size")
        if not _ints([b]) or b == 0:
            raise FormatError(f"{field}.block_size: expected a positive integer, got {b!r}")
        n_tiles = _first_dim(table, f"{name}.val")
        if n_tiles > -(-rows // b) * -(-cols // b):
            raise FormatError(f"tensor {name}.val: {n_tiles} tiles, more than the weight's tile grid holds")
        return {f"{name}.idx": ("U8", None), f"{name}.val": (_VALUE, [n_tiles, b, b])}
    if delta == "lora":
        scale = info.get("scale")
        # json.loads reads NaN / Infinity literals; either would turn every weight it touches into NaN.
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not _finite(scale):
            raise FormatError(f"{field}.scale: expected a finite number, got {scale!r}")
        rank = _first_dim(table, f"{name}.lora_A")
        return {f"{name}.lora_A": (_VALUE, [rank, cols]), f"{name}.lora_B": (_VALUE, [rows, rank])}
    return {f"{name}.delta": (_VALUE, [rows, cols])}


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


def _first_dim(table: dict[str, Any], tensor: str) -> int:
    shape = table.get(tensor, {}).get("shape") or [0]
    return shape[0]


def _ints(xs: Any) -> bool:
    return isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)


def _prod(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out
