"""Deltas and experts: the data model every other part works on (format/ only serialises it).

An expert is a set of per-weight deltas against a frozen base model. Keys of ``Expert.deltas`` are the
base model's parameter names (``model.layers.0.self_attn.q_proj.weight``); every weight W has shape
[out, in] and a delta is added as ``W += scale * D``.

Four delta kinds, one small shape each (``kind``, ``shape``, ``nnz``, ``to_dense``, ``add_to_``,
``entries``):
  SparseDelta       sorted unique flat row-major positions [nnz] and their values [nnz]
  BlockSparseDelta  sorted unique tile positions [n_tiles] on W's TileGrid and values [n_tiles, B, B];
                    entries of edge tiles that fall outside W are zero and ignored
  LoraDelta         A [r, in], B [out, r], scale (alpha / r): D = scale * B @ A
  FullDelta         values [out, in] (a full fine-tune's W_t - W0)
The kinds themselves are listed once, in hubtool.delta.kinds (KIND): the same words as `hub train
--kind`, the catalog's expert kinds and the packed file's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hubtool.delta.grid import TileGrid
from hubtool.delta.kinds import KIND, check_table


@dataclass
class SparseDelta:
    shape: tuple[int, int]
    indices: torch.Tensor  # int64 [nnz], sorted, unique, in [0, out*in)
    values: torch.Tensor  # [nnz]
    fingerprint: str | None = None  # of the base weight this was trained against

    kind: ClassVar[str] = "sparse"
    is_sparse: ClassVar[bool] = True  # entries() lists only what is stored

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.zeros(self.shape[0] * self.shape[1], dtype=dtype)
        out[self.indices] = self.values.to(dtype)
        return out.view(self.shape)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted flat positions [nnz] int64, fp32 values [nnz])."""
        return self.indices.to(torch.int64), self.values.to(torch.float32)

    def add_to_(self, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        from hubtool.kernels import scatter_add_  # here: the kernels import the tile grid from this package

        return scatter_add_(weight, self.indices, self.values, scale)


@dataclass
class BlockSparseDelta:
    shape: tuple[int, int]
    block_size: int
    tiles: torch.Tensor  # int64 [n_tiles], sorted unique positions on the tile grid (row-major)
    values: torch.Tensor  # [n_tiles, B, B]
    fingerprint: str | None = None

    kind: ClassVar[str] = "block-sparse"
    is_sparse: ClassVar[bool] = True

    @property
    def grid(self) -> TileGrid:
        return TileGrid(tuple(self.shape), self.block_size)

    @property
    def nnz(self) -> int:
        """Entries inside W covered by the kept tiles (edge tiles count only their inside part)."""
        return int(self.grid.inside_counts(self.tiles).sum())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        grid = self.grid
        padded = torch.zeros(grid.cells, self.block_size, self.block_size, dtype=dtype)
        padded[self.tiles] = self.values.to(dtype)
        return grid.from_tiles(padded)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept tiles' entries inside W: (sorted flat positions [nnz], fp32 values [nnz])."""
        return self.grid.flatten(self.tiles, self.values.to(torch.float32))

    def add_to_(self, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        from hubtool.kernels import block_add_

        return block_add_(weight, self.tiles, self.values, self.block_size, scale)


@dataclass
class LoraDelta:
    shape: tuple[int, int]
    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scale: float  # alpha / r
    fingerprint: str | None = None

    kind: ClassVar[str] = "lora"
    is_sparse: ClassVar[bool] = False  # touches every entry of W

    @property
    def nnz(self) -> int:
        return int(self.A.numel() + self.B.numel())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.B.to(torch.float32) @ self.A.to(torch.float32) * self.scale).to(dtype)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _all_entries(self.to_dense())

    def add_to_(self, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        from hubtool.kernels import dense_add_

        return dense_add_(weight, self.to_dense(), scale)


@dataclass
class FullDelta:
    shape: tuple[int, int]
    values: torch.Tensor  # [out, in]
    fingerprint: str | None = None

    kind: ClassVar[str] = "full"
    is_sparse: ClassVar[bool] = False

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.values.to(dtype)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _all_entries(self.to_dense())

    def add_to_(self, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        from hubtool.kernels import dense_add_

        return dense_add_(weight, self.values, scale)


def _all_entries(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense [out, in] delta as entries at every position (it touches all of W)."""
    return torch.arange(dense.numel(), dtype=torch.int64), dense.reshape(-1).to(torch.float32)


Delta = SparseDelta | BlockSparseDelta | LoraDelta | FullDelta
DELTA_TYPES: dict[str, type] = {k: globals()[spec.delta] for k, spec in KIND.items()}
check_table(DELTA_TYPES, "hubtool.delta.deltas")


@dataclass
class Expert:
    """One expert: deltas plus the metadata that makes the packed file self-describing."""

    name: str
    task: str
    kind: str  # one of EXPERT_KINDS (hubtool.delta.kinds)
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
