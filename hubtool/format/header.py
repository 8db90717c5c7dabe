"""Read and validate a packed expert's header without torch or numpy (pure stdlib).

The catalog, `hub list` and `hub show` read experts through this module so they never pay for
importing torch. A safetensors file starts with an 8-byte little-endian header length N, then N
bytes of JSON: a tensor table {name: {dtype, shape, data_offsets}} and a `__metadata__` string map.
This module checks everything that can be checked from those bytes and the file size; the payloads
themselves (positions, finite values) are checked by hubtool.format.packed.unpack.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

from hubtool.delta import kinds as _kinds
from hubtool.errors import FormatError, shown
from hubtool.format import safejson

FORMAT_NAME = "hubtool.expert"
# Version 2 (this one): kinds and per-weight deltas are the registry's names (hubtool.delta.kinds).
# Version 1 files may also use the old names (block, dense, full-delta); they read as the new ones.
FORMAT_VERSION = "2"
READ_VERSIONS = ("1", "2")
# One vocabulary, from the registry (torch-free): expert kinds are the delta kinds plus "merged", which
# holds whatever its parents held.
DELTA_KINDS = _kinds.DELTA_KINDS
KINDS = _kinds.EXPERT_KINDS
ENCODINGS = ("raw", "bitmask", "elias-fano", "golomb")
VALUE_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}  # ours -> safetensors
# kind -> the per-weight delta kinds it may hold
DELTAS_OF_KIND = {**{k: {k} for k in DELTA_KINDS}, "merged": set(DELTA_KINDS)}
# Names version-1 files written before the vocabulary was unified use; read as the new ones, never written.
LEGACY_KINDS = LEGACY_DELTAS = _kinds.LEGACY_NAMES
_ITEMSIZE = {"U8": 1, "BF16": 2, "F16": 2, "F32": 4}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit
# Caps that bound what a header can make a reader allocate or walk: far above any real expert (a 70B
# model's every linear weight is ~560 weights, ~1,700 tensors; its largest weight ~2^32 entries).
MAX_TENSORS = 1 << 17
MAX_DIM = 2**31 - 1  # one side of a weight; positions are int64, raw ones int32
MAX_NUMEL = 2**40  # entries of one weight
_MAX_NAME = 1024  # characters in a tensor or weight name
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
    head, size = _read_head(source)
    return _parse(head, size, str(source))


def read_table(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of any safetensors file (a base model's weights, say): {tensor name: {"dtype", "shape",
    "data_offsets"}} plus its "__metadata__" if any, read within safetensors' 100 MiB limit and nothing of
    the data. The length and JSON are checked as for an expert; the entries are not (any dtype may occur).
    FormatError naming the file."""
    head, size = _read_head(path)
    try:
        return _table(head, size)[0]
    except FormatError as err:
        raise FormatError(f"{path}: {err}") from None


def _read_head(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """(the 8-byte length and at most 100 MiB of header after it, the file's size)."""
    try:
        with Path(path).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) == 8:
                head += f.read(min(struct.unpack("<Q", head)[0], _MAX_HEADER))
    except OSError as err:
        raise FormatError(f"{path}: cannot read: {err.strerror}") from None
    return head, size


def header_from_bytes(data: bytes, where: str) -> dict[str, Any]:
    """read_header for a file already in memory; `where` names it in errors."""
    return _parse(data[: 8 + _MAX_HEADER], len(data), where)


def _parse(head: bytes, size: int, where: str) -> dict[str, Any]:
    try:
        return _parse_checked(head, size)
    except FormatError as err:
        raise FormatError(f"{where}: {err}") from None


def _parse_checked(head: bytes, size: int) -> dict[str, Any]:
    table, n = _table(head, size)
    raw = table.pop("__metadata__", None)
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise FormatError("__metadata__: missing or not a string map; not a hubtool expert")
    meta = _decode_metadata(raw)
    _check_tensors(table, size - 8 - n)
    _check_weights(meta, table)
    meta["tensors"] = table
    return meta


def _table(head: bytes, size: int) -> tuple[dict[str, Any], int]:
    """(the parsed safetensors header, its length n): in bounds, a JSON object, at most MAX_TENSORS entries."""
    if len(head) < 8:
        raise FormatError("not a safetensors file: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER and 8 + n <= size:
        raise FormatError(f"header length {n} is over safetensors' limit of {_MAX_HEADER} bytes (100 MiB)")
    if n > _MAX_HEADER or 8 + n > size:
        raise FormatError(
            f"header length {n} does not fit the file ({size} bytes): truncated or not safetensors"
        )
    table = safejson.loads(head[8 : 8 + n], "safetensors header", error=FormatError, max_depth=4)
    if not isinstance(table, dict):
        raise FormatError("not a safetensors file: header is not a JSON object")
    if len(table) > MAX_TENSORS + 1:
        raise FormatError(f"safetensors header: {len(table) - 1} tensors, more than the {MAX_TENSORS} allowed")
    return table, n


def _decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT_NAME:
        raise FormatError(f"__metadata__.format: expected {FORMAT_NAME!r}, got {shown(raw.get('format'), 60)}")
    if raw.get("format_version") not in READ_VERSIONS:
        raise FormatError(
            f"__metadata__.format_version: this hubtool reads versions {', '.join(READ_VERSIONS)}, "
            f"got {shown(raw.get('format_version'), 60)}"
        )
    for key in _REQUIRED:
        if key not in raw:
            raise FormatError(f"__metadata__.{key}: missing")
    meta: dict[str, Any] = dict(raw)
    for key, kind in _JSON_FIELDS.items():
        # NaN / Infinity literals parse here; the field that holds one says so (scale, metrics, weight).
        meta[key] = (safejson.loads(raw[key], f"__metadata__.{key}", error=FormatError, allow_nan=True)
                     if key in raw else kind())
        if not isinstance(meta[key], kind):
            raise FormatError(f"__metadata__.{key}: expected a JSON {'object' if kind is dict else 'array'}")
    for key in ("name", "task", "base_model"):  # the catalog checks names; here only what bounds a reader
        if not meta[key] or len(meta[key]) > 4096:
            raise FormatError(f"__metadata__.{key}: expected 1 to 4096 characters, got {shown(meta[key], 60)}")
    _check_metrics(meta["metrics"])
    _check_parents(meta["parents"])
    if "tasks" in raw:  # never written by pack; the catalog reads it as secondary tasks when present
        meta["tasks"] = safejson.loads(raw["tasks"], "__metadata__.tasks", error=FormatError)
        if not isinstance(meta["tasks"], list) or not all(isinstance(t, str) and t for t in meta["tasks"]):
            raise FormatError("__metadata__.tasks: expected a JSON array of task names")
    for key, cast in (("keep_ratio", float), ("nnz", int)):
        text = raw.get(key)
        try:
            if text is not None and len(text) > 64:  # a count or a ratio, not a 5000-digit int()
                raise ValueError
            meta[key] = cast(text) if text is not None else None
        except ValueError:
            raise FormatError(f"__metadata__.{key}: expected a number, got {shown(text, 60)}") from None
        if key == "keep_ratio" and meta[key] is not None and not math.isfinite(meta[key]):
            raise FormatError(f"__metadata__.keep_ratio: expected a number in [0, 1], got {shown(text, 60)}")
    for key in ("base_revision", "targets"):
        meta.setdefault(key, None)
    if meta["format_version"] == "1":
        meta["kind"] = LEGACY_KINDS.get(meta["kind"], meta["kind"])
    if meta["kind"] not in KINDS:
        raise FormatError(f"__metadata__.kind: expected one of {', '.join(KINDS)}, got {shown(meta['kind'], 60)}")
    if meta["value_dtype"] not in VALUE_DTYPES:
        raise FormatError(
            f"__metadata__.value_dtype: expected one of {', '.join(VALUE_DTYPES)}, got {shown(meta['value_dtype'], 60)}"
        )
    if meta["keep_ratio"] is not None and not 0.0 <= meta["keep_ratio"] <= 1.0:
        raise FormatError(f"__metadata__.keep_ratio: expected a number in [0, 1], got {meta['keep_ratio']}")
    return meta



def _check_metrics(metrics: dict[str, Any]) -> None:
    """{task: {metric: finite number}}, or a flat {metric: finite number} for the expert's own task."""
    for task, value in metrics.items():
        field = f"__metadata__.metrics[{shown(task, 60)}]"
        if isinstance(value, dict):
            for metric, v in value.items():
                if not safejson.finite(v):
                    raise FormatError(f"{field}[{shown(metric, 60)}]: expected a finite number, got {shown(v, 60)}")
        elif not safejson.finite(value):
            raise FormatError(f"{field}: expected a finite number or an object of them, got {shown(value, 60)}")


def _check_parents(parents: list[Any]) -> None:
    """Each parent is a ref string or {"ref": str, "role": str or null, "weight": finite number or null}."""
    for i, p in enumerate(parents):
        field = f"__metadata__.parents[{i}]"
        if isinstance(p, str):
            p = {"ref": p}
        if not isinstance(p, dict) or not isinstance(p.get("ref"), str) or not p["ref"].strip():
            raise FormatError(f"{field}: expected a ref string or {{ref, role, weight}}, got {shown(p, 60)}")
        if p.get("role") is not None and not isinstance(p["role"], str):
            raise FormatError(f"{field}.role: expected a string or null, got {shown(p['role'], 60)}")
        if p.get("weight") is not None and not safejson.finite(p["weight"]):
            raise FormatError(f"{field}.weight: expected a finite number or null, got {shown(p['weight'], 60)}")


def _check_tensors(table: dict[str, Any], data_size: int) -> None:
    """Each entry has a known dtype, a shape, and in-bounds offsets whose length fits dtype x shape."""
    for name, entry in table.items():
        if len(name) > _MAX_NAME:
            raise FormatError(f"tensor {shown(name, 60)}: name longer than {_MAX_NAME} characters")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"tensor {name}: expected {{dtype, shape, data_offsets}}")
        if not isinstance(entry["dtype"], str) or entry["dtype"] not in _ITEMSIZE:
            raise FormatError(f"tensor {name}: dtype {shown(entry['dtype'], 60)} is not one of {', '.join(_ITEMSIZE)}")
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
        field = f"__metadata__.weights[{name if len(name) <= 200 else name[:197] + '...'}]"
        if len(name) > _MAX_NAME:
            raise FormatError(f"{field}: weight name longer than {_MAX_NAME} characters")
        if not isinstance(info, dict):
            raise FormatError(f"{field}: expected a JSON object")
        delta = info.get("delta")
        if isinstance(delta, str) and meta["format_version"] == "1":
            delta = info["delta"] = LEGACY_DELTAS.get(delta, delta)
        if not isinstance(delta, str):
            raise FormatError(f"{field}.delta: expected a kind name string, got {shown(delta, 60)}")
        if delta not in allowed:
            raise FormatError(
                f"{field}.delta: a {meta['kind']} expert holds {' | '.join(sorted(allowed))} deltas, got {shown(delta, 60)}"
            )
        shape = info.get("shape")
        if not _ints(shape) or len(shape) != 2 or 0 in shape or max(shape) > MAX_DIM or _prod(shape) > MAX_NUMEL:
            raise FormatError(
                f"{field}.shape: expected [out, in] positive integers (at most {MAX_DIM} each, "
                f"{MAX_NUMEL} entries), got {shown(shape, 60)}"
            )
        if not _ints([info.get("nnz")]):
            raise FormatError(f"{field}.nnz: expected a non-negative integer, got {shown(info.get('nnz'), 60)}")
        if "fingerprint" not in info:
            raise FormatError(f"{field}.fingerprint: missing (expected a string or null)")
        if info["fingerprint"] is not None and not isinstance(info["fingerprint"], str):
            raise FormatError(f"{field}.fingerprint: expected a string or null, got {shown(info['fingerprint'], 60)}")
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
    if _kinds.KIND[info["delta"]].sparse and info.get("encoding") not in ENCODINGS:
        raise FormatError(
            f"{field}.encoding: expected one of {', '.join(ENCODINGS)}, got {shown(info.get('encoding'), 60)}"
        )
    return _SPECS[info["delta"]](name, info, field, table)


def _sparse_spec(name: str, info: dict[str, Any], field: str, table: dict[str, Any]) -> dict:
    (rows, cols), nnz = info["shape"], info["nnz"]
    if nnz > rows * cols:
        raise FormatError(f"{field}.nnz: {nnz} is more than the {rows * cols} entries of the weight")
    return {f"{name}.idx": ("U8", None), f"{name}.val": (_VALUE, [nnz])}


def _block_spec(name: str, info: dict[str, Any], field: str, table: dict[str, Any]) -> dict:
    (rows, cols), b = info["shape"], info.get("block_size")
    if not _ints([b]) or b == 0:
        raise FormatError(f"{field}.block_size: expected a positive integer, got {shown(b, 60)}")
    n_tiles = _first_dim(table, f"{name}.val")
    if n_tiles > -(-rows // b) * -(-cols // b):
        raise FormatError(f"tensor {name}.val: {n_tiles} tiles, more than the weight's tile grid holds")
    return {f"{name}.idx": ("U8", None), f"{name}.val": (_VALUE, [n_tiles, b, b])}


def _lora_spec(name: str, info: dict[str, Any], field: str, table: dict[str, Any]) -> dict:
    (rows, cols), scale = info["shape"], info.get("scale")
    # json.loads reads NaN / Infinity literals; either would turn every weight it touches into NaN.
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not _finite(scale):
        raise FormatError(f"{field}.scale: expected a finite number, got {shown(scale, 60)}")
    rank = _first_dim(table, f"{name}.lora_A")
    return {f"{name}.lora_A": (_VALUE, [rank, cols]), f"{name}.lora_B": (_VALUE, [rows, rank])}


def _full_spec(name: str, info: dict[str, Any], field: str, table: dict[str, Any]) -> dict:
    return {f"{name}.delta": (_VALUE, list(info["shape"]))}


# The tensors each kind stores (docs/format.md, Tensor naming); one entry per kind of the registry.
_SPECS = {"sparse": _sparse_spec, "block-sparse": _block_spec, "lora": _lora_spec, "full": _full_spec}
_kinds.check_table(_SPECS, "hubtool.format.header")


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
