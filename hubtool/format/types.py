"""In-memory experts: what pack() writes and unpack() returns.

An expert is a set of per-weight deltas against a frozen base model. Keys of ``Expert.deltas`` are
the base model's parameter names (``model.layers.0.self_attn.q_proj.weight``); every weight W has
shape [out, in] and the delta is added as ``W += scale * delta.to_dense()``.

Four delta kinds share one small interface (shape, nnz, to_dense, fingerprint):
  SparseDelta  sorted unique flat row-major positions [nnz] and their values [nnz]
  BlockDelta   sorted unique tile positions [n_tiles] on the ceil(out/B) x ceil(in/B) tile grid and
               values [n_tiles, B, B]; entries of edge tiles that fall outside W are zero and ignored
  LoraDelta    A [r, in], B [out, r], scale (alpha / r): delta = scale * B @ A
  DenseDelta   values [out, in] (full fine-tunes, W_t - W0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hubtool.format.header import KINDS  # noqa: F401  (re-exported; header.py is the torch-free spec)


@dataclass
class SparseDelta:
    shape: tuple[int, int]
    indices: torch.Tensor  # int64 [nnz], sorted, unique, in [0, out*in)
    values: torch.Tensor  # [nnz]
    fingerprint: str | None = None  # of the base weight this was trained against

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.zeros(self.shape[0] * self.shape[1], dtype=dtype)
        out[self.indices] = self.values.to(dtype)
        return out.view(self.shape)


@dataclass
class BlockDelta:
    shape: tuple[int, int]
    block_size: int
    tiles: torch.Tensor  # int64 [n_tiles], sorted unique positions on the tile grid (row-major)
    values: torch.Tensor  # [n_tiles, B, B]
    fingerprint: str | None = None

    @property
    def grid(self) -> tuple[int, int]:
        b = self.block_size
        return (-(-self.shape[0] // b), -(-self.shape[1] // b))

    @property
    def nnz(self) -> int:
        """Entries inside W covered by the kept tiles (edge tiles count only their inside part)."""
        b, (_, gc) = self.block_size, self.grid
        r, c = self.tiles // gc, self.tiles % gc
        rows = (self.shape[0] - r * b).clamp(max=b)
        cols = (self.shape[1] - c * b).clamp(max=b)
        return int((rows * cols).sum())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        b, (gr, gc) = self.block_size, self.grid
        padded = torch.zeros(gr * gc, b, b, dtype=dtype)
        padded[self.tiles] = self.values.to(dtype)
        # [gr*gc, b, b] -> [gr, gc, b, b] -> [gr, b, gc, b] -> [gr*b, gc*b], then crop to W
        padded = padded.view(gr, gc, b, b).permute(0, 2, 1, 3).reshape(gr * b, gc * b)
        return padded[: self.shape[0], : self.shape[1]].contiguous()


@dataclass
class LoraDelta:
    shape: tuple[int, int]
    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scale: float  # alpha / r
    fingerprint: str | None = None

    @property
    def nnz(self) -> int:
        return int(self.A.numel() + self.B.numel())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.B.to(torch.float32) @ self.A.to(torch.float32) * self.scale).to(dtype)


@dataclass
class DenseDelta:
    shape: tuple[int, int]
    values: torch.Tensor  # [out, in]
    fingerprint: str | None = None

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.values.to(dtype)


Delta = SparseDelta | BlockDelta | LoraDelta | DenseDelta


@dataclass
class Expert:
    """One expert: deltas plus the metadata that makes the packed file self-describing."""

    name: str
    task: str
    kind: str  # one of KINDS
    base_model: str  # hub id, local folder, or an embedded name such as "smollm2-135m"
    deltas: dict[str, Delta]
    base_revision: str | None = None
    keep_ratio: float | None = None
    value_dtype: str = "bfloat16"  # bfloat16 | float16 | float32
    targets: str | None = None  # e.g. "qkv" or a regex
    config: dict[str, Any] = field(default_factory=dict)  # training config, merge recipe, ...
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value
    parents: list[str] = field(default_factory=list)  # lineage: "name@version" of merged parents

    @property
    def nnz(self) -> int:
        return sum(d.nnz for d in self.deltas.values())
